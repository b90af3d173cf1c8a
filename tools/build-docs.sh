#!/usr/bin/env bash
# Build the documentation site into site/ with MkDocs + Material for MkDocs, strictly: any
# warning (a broken link or anchor, a page missing from the nav) fails the build.
#
#   tools/build-docs.sh        (after tools/setup-env.sh: the reference pages import the package)
#
# The docs tools go into the project's .venv; .ci/constraints.txt keeps torch where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MEDOOD_VENV:-.venv}
[ -x "$venv/bin/python" ] || { echo "build-docs: no $venv; run tools/setup-env.sh first" >&2; exit 1; }
PIP_CONSTRAINT="$PWD/.ci/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$venv/bin/python" -m pip install -q -r docs/requirements.txt
NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict --site-dir site
