#!/usr/bin/env bash
# Set up ./.venv for napari-medood on a fresh Debian/Ubuntu machine.
#
#   tools/setup-env.sh          Python environment only (enough for the CLI)
#   tools/setup-env.sh --gui    also the system libraries napari needs on a headless
#                               machine (Xvfb, Mesa GL, Qt's xcb deps); needs root or sudo
#
# torch is installed first and pinned by .ci/constraints.txt, so no later requirement can
# swap it for a multi-GB CUDA build. Re-running is cheap: what is there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
gui=0
for arg in "$@"; do
  case "$arg" in
    --gui) gui=1 ;;
    *) echo "setup-env: unknown option $arg (valid: --gui)" >&2; exit 2 ;;
  esac
done

if [ "$gui" = 1 ]; then
  packages="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0
    libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
    libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1
    libfontconfig1 libdbus-1-3 libglib2.0-0 fonts-dejavu-core"
  missing=""
  for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup-env: installing system packages:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      --no-upgrade $missing >/dev/null
  fi
fi

venv=${MEDOOD_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# what the environment was last set up from: the same files and Python again need no pip
# (three pip runs that change nothing cost about 5 s; MEDOOD_SETUP_FORCE=1 runs them anyway)
stamp="$venv/.medood-setup"
wanted=$(cat pyproject.toml .ci/constraints.txt tools/setup-env.sh | sha256sum | cut -d' ' -f1)
wanted="$wanted $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
if [ "${MEDOOD_SETUP_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
    && "$venv/bin/python" -c 'import importlib.util as u, napari_medood; assert u.find_spec("torch")' 2>/dev/null; then
  echo "setup-env: ready ($venv, unchanged since it was set up)"
  exit 0
fi
rm -f "$stamp"
export PIP_CONSTRAINT="$PWD/.ci/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
log=.ci-pip.log
pip_install() {
  "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1 || {
    tail -40 "$log" >&2; echo "setup-env: pip install $* failed (log: $log)" >&2; exit 1; }
}
: >"$log"
pip_install -U pip
pip_install "torch==2.13.0"
pip_install -e ".[testing]"
"$venv/bin/python" -c 'import torch; print("setup-env: torch", torch.__version__)'
echo "$wanted" >"$stamp"
echo "setup-env: ready ($venv)"
