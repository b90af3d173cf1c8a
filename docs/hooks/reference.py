"""MkDocs hook: the reference pages, generated from the code each time the site is built.

- ``reference/cli/<command>.md``: every command's options, read from the argparse parser
  that the command itself uses (``build_parser()`` in ``napari_medood.cli.<module>``), and
  for ``medood-train`` every training method's configuration keys, read from the
  configuration dataclass its trainer names.
- ``reference/models/index.md`` and ``reference/models/<name>.md``: every shipped model,
  from its ``card.json`` and its ``README.md`` in ``src/napari_medood/bundled_models/``.
- ``reference/training-logs.md``: the training logs in ``docs/training/``.

Nothing is written to disk: the pages exist only in the build (``File.generated``). The
parsers and cards are read without importing torch, monai or napari (the command modules
import those inside the functions that run a command).

mkdocs.yml names this file under ``hooks:``; the nav entry ``reference/models/index.md``
is expanded here into one entry per shipped model.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
DOCS = REPO / "docs"
MODELS = SRC / "napari_medood" / "bundled_models"
MODELS_LINK = REPO / "models"  # the repository's models/ links to the folder above

#: (command, module in napari_medood.cli, generated page)
COMMANDS = [
    ("medood-predict", "predict", "reference/cli/medood-predict.md"),
    ("medood-eval", "evaluate", "reference/cli/medood-eval.md"),
    ("medood-synth", "synth", "reference/cli/medood-synth.md"),
    ("medood-compare", "compare", "reference/cli/medood-compare.md"),
    ("medood-train", "train", "reference/cli/medood-train.md"),
]
MODELS_DIR = "reference/models"
MODELS_INDEX = f"{MODELS_DIR}/index.md"
TRAINING_LOGS = "reference/training-logs.md"

GENERATED_NOTE = (
    '!!! info "Generated from the code"\n'
    "    This page is written by `docs/hooks/reference.py` each time the site is built, "
    "from {source}. Edit that, not this page.\n"
)


# --------------------------------------------------------------------------------------
# MkDocs events


def on_config(config: Any) -> Any:
    _import_package()
    _check_every_command_has_a_page()
    config["nav"] = _expand_model_nav(config.get("nav"))
    return config


def _check_every_command_has_a_page() -> None:
    """A console script added to pyproject.toml without an entry in ``COMMANDS`` would get
    no reference page and nothing would say so: fail the build instead."""
    import tomllib

    from mkdocs.exceptions import PluginError

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    missing = sorted(set(scripts) - {command for command, _, _ in COMMANDS})
    if missing:
        raise PluginError(
            f"docs/hooks/reference.py: no reference page for {', '.join(missing)}; add it "
            "to COMMANDS (and to the nav in mkdocs.yml)"
        )


def on_files(files: Files, config: Any) -> Files:
    for uri, content in generated_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def _import_package() -> None:
    """napari_medood from the environment (an editable install), else from src/."""
    try:
        importlib.import_module("napari_medood")
    except ImportError:
        sys.path.insert(0, str(SRC))
        importlib.import_module("napari_medood")


def _expand_model_nav(nav: Any) -> Any:
    """Replace the nav entry that names the models' index by the index and one entry per
    model, so that a new model folder needs no edit of mkdocs.yml."""
    if isinstance(nav, list):
        return [_expand_model_nav(item) for item in nav]
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            if value == MODELS_INDEX:
                value = [{"All models": MODELS_INDEX}] + [
                    {name: f"{MODELS_DIR}/{name}.md"} for name in model_names()
                ]
            else:
                value = _expand_model_nav(value)
            out[title] = value
        return out
    return nav


def generated_pages() -> dict[str, str]:
    pages = {uri: command_page(command, module) for command, module, uri in COMMANDS}
    pages[MODELS_INDEX] = models_index_page()
    for name in model_names():
        pages[f"{MODELS_DIR}/{name}.md"] = model_page(name)
    pages[TRAINING_LOGS] = training_logs_page()
    return pages


# --------------------------------------------------------------------------------------
# Markdown helpers


def escape(text: Any) -> str:
    """Plain text made safe inside a Markdown paragraph or table cell."""
    text = str(text)
    text = text.replace("\\", "\\\\")
    for char in "*_[]`|":
        text = text.replace(char, "\\" + char)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.split())


def code(text: Any) -> str:
    """An inline code span (Python-Markdown's tables never split a cell at a pipe inside
    one, so pipes stay as they are)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return lines + [""]


def text_block(text: str) -> list[str]:
    """Preformatted text, as the command prints it."""
    text = text.rstrip("\n")
    if not text.strip():
        return []
    return ["```text", text, "```", ""]


def json_value(value: Any) -> str:
    # default=str: a configuration default JSON cannot spell (a Path, an Enum) is shown as
    # its text rather than failing the build
    return json.dumps(value, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------------------
# Commands


def _help(action: argparse.Action, prog: str) -> str:
    """An option's help with argparse's %-placeholders filled, as --help prints it (without
    the "(default: ...)" that the help formatter appends: the table has its own column)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog=prog)
    for key in list(params):
        if params[key] is argparse.SUPPRESS:
            del params[key]
        elif hasattr(params[key], "__name__"):
            params[key] = params[key].__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(choice) for choice in params["choices"])
    return action.help % params


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""  # flags, and options whose absence means "not given"
    if isinstance(action.default, list | tuple) and not action.default:
        return ""
    return code(action.default)


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return code(action.metavar or action.dest)
    metavar = ""
    if action.nargs != 0:
        if action.metavar:
            metavar = " " + str(action.metavar)
        elif action.choices:
            metavar = " {" + ",".join(str(choice) for choice in action.choices) + "}"
        else:
            metavar = " " + action.dest.upper()
    return ", ".join(code(flag + metavar) for flag in action.option_strings)


def parser_reference(parser: argparse.ArgumentParser, heading: str = "##") -> list[str]:
    """Usage, description, arguments and options, and the epilog of one parser."""
    lines = [f"{heading} Usage", ""]
    lines += text_block(parser.format_usage())
    if parser.description:
        for paragraph in parser.description.split("\n\n"):
            lines += [escape(paragraph), ""]
    positionals = [a for a in parser._actions if not a.option_strings]
    options = [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]
    if positionals:
        lines += [f"{heading} Arguments", ""]
        rows = [[_names(a), escape(_help(a, parser.prog))] for a in positionals]
        lines += table(["argument", "what it is"], rows)
    if options:
        lines += [f"{heading} Options", ""]
        rows = [[_names(a), escape(_help(a, parser.prog)), _default(a)] for a in options]
        lines += table(["option", "what it does", "default"], rows)
    if parser.epilog:
        lines += [f"{heading} Notes and examples (from `--help`)", ""]
        lines += text_block(parser.epilog)
    return lines


def command_page(command: str, module_name: str) -> str:
    module = importlib.import_module(f"napari_medood.cli.{module_name}")
    parser = module.build_parser()
    source = f"`build_parser()` in `napari_medood/cli/{module_name}.py`"
    if command == "medood-train":
        source += (
            ", `napari_medood/cli/zoo.py`, `napari_medood/cli/campaign.py` and each trainer's "
            "configuration class"
        )
    lines = [f"# {command}", "", GENERATED_NOTE.format(source=source)]
    lines += parser_reference(parser)
    if command == "medood-predict":
        lines += _model_names_section()
    if command == "medood-train":
        lines += _training_methods_section()
    return "\n".join(lines)


def _model_names_section() -> list[str]:
    from napari_medood.detectors import available_models, default_model

    names = model_names()
    lines = [
        "## Names that `--model` takes",
        "",
        f"Without `--model` the default is `{default_model()}`. A checkpoint folder "
        "(`card.json` + `model.safetensors`) or several comma-separated checkpoints (an "
        "ensemble) work as well. This is the list `medood-predict --list-models` prints.",
        "",
    ]
    rows = []
    for name, description in available_models().items():
        shown = f"[{code(name)}](../models/{name}.md)" if name in names else code(name)
        kind = "shipped model" if name in names else "baseline (no training)"
        rows.append([shown, kind, escape(description)])
    return lines + table(["name", "kind", "what it is"], rows)


def _defined_in(config: type, name: str) -> type:
    for cls in config.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            return cls
    return config


def _field_default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    return code(json_value(value))


def _config_table(fields: list[dataclasses.Field]) -> list[str]:
    rows = [[code(f.name), code(f.type), _field_default(f)] for f in fields]
    return table(["key", "type", "default"], rows)


def _training_methods_section() -> list[str]:
    from napari_medood.registry import trainable_families
    from napari_medood.training.config import (
        OodSupervisionSettings,
        RunSettings,
        StepRunSettings,
    )
    from napari_medood.training.registry import get_trainer

    shared = (RunSettings, StepRunSettings, OodSupervisionSettings)
    families = trainable_families()
    lines = [
        "## Training methods",
        "",
        "`METHOD` names a registered detector family that has a trainer. Each reads a YAML "
        "configuration (`--config`); `--set KEY=VALUE` overrides one key, and `--out`, "
        "`--ood-supervision`, `--precision` and `--budget` are the same as `--set out=...`, "
        "`--set ood_supervision=...`, `--set precision=...` and `--set budget_s=...`.",
        "",
    ]
    rows = [
        [f"[{code(method)}](#medood-train-{method})", code(family.name), escape(family.description)]
        for method, family in families.items()
    ]
    rows.append(
        [
            "[`zoo`](#medood-train-zoo)",
            " ",
            "the brain suite (U-Net, segmenter, diffusion model, trust gate) in one budget",
        ]
    )
    rows.append(
        [
            "[`campaign`](#medood-train-campaign)",
            " ",
            "the brain members trained on in the background, session after session",
        ]
    )
    lines += table(["method", "family (cards' `detector`)", "what the family is"], rows)

    lines += [
        "### Keys every method shares",
        "",
        "Every method's configuration extends these classes of "
        "`napari_medood/training/config.py`; the tables below list only the keys a method "
        "adds or whose default it changes, and which of these it takes.",
        "",
    ]
    for cls in shared:
        own = [f for f in dataclasses.fields(cls) if _defined_in(cls, f.name) is cls]
        lines += [f"#### `{cls.__name__}`", ""]
        lines += text_block(_docstring(cls))
        lines += _config_table(own)

    for method, family in families.items():
        trainer = get_trainer(method)
        config = trainer.config
        fields = dataclasses.fields(config)
        own = [f for f in fields if _defined_in(config, f.name) not in shared]
        inherited = [cls.__name__ for cls in shared if issubclass(config, cls)]
        lines += [
            f"### medood-train {method}",
            "",
            f"{escape(trainer.description[:1].upper() + trainer.description[1:])}.",
            "",
            f"Family `{family.name}`; configuration class `{config.__name__}` "
            f"(`{config.__module__.replace('.', '/')}.py`)"
            + (
                f"; example configuration `{trainer.example_config}`"
                if trainer.example_config
                else ""
            )
            + f"; it also takes the keys of {', '.join(f'`{n}`' for n in inherited)}.",
            "",
        ]
        lines += text_block(_docstring(config))
        lines += _config_table(own)

    from napari_medood.cli.zoo import build_parser as zoo_parser

    lines += [
        "### medood-train zoo",
        "",
        "The whole brain suite in one time budget (`napari_medood/cli/zoo.py`, "
        "`napari_medood/training/zoo.py`). `--set STAGE.KEY=VALUE` sets one key of one "
        "stage's configuration: `unet.`, `seg.`, `diffusion.` and `gate.` take the keys of "
        "the methods above (`gate.` those of `flow`), `valset.` those of the validation sets.",
        "",
    ]
    lines += parser_reference(zoo_parser(), heading="####")

    from napari_medood.cli.campaign import build_parser as campaign_parser

    lines += [
        "### medood-train campaign",
        "",
        "The brain members (`seg`, `unet`) trained on round after round in the background "
        "(`napari_medood/cli/campaign.py`, `napari_medood/training/campaign.py`). "
        "`--set MEMBER.KEY=VALUE` sets one key of one member's recipe (the keys of the methods "
        "above), or `round_steps`, `max_lr` and `val_interval` of its rounds.",
        "",
    ]
    lines += parser_reference(campaign_parser(), heading="####")
    return lines


def _docstring(cls: type) -> str:
    import inspect

    return inspect.cleandoc(cls.__doc__ or "")


# --------------------------------------------------------------------------------------
# Shipped models


def model_names() -> list[str]:
    """The shipped models, in the order of bundled_models/README.md's table, then any other
    model folder by name."""
    from napari_medood.models.checkpoint import bundled_models

    folders = sorted(bundled_models())
    listed = re.findall(r"^\| `([^`]+)` \|", (MODELS / "README.md").read_text(), re.M)
    ordered = [name for name in listed if name in folders]
    return ordered + [name for name in folders if name not in ordered]


def read_card(name: str) -> dict[str, Any]:
    """The shipped model's card as the package reads it (``models.checkpoint.read_card``)."""
    from napari_medood.models import checkpoint

    return checkpoint.read_card(checkpoint.bundled_models()[name])


def _resolve_link(target: str, folder_name: str | None) -> Path | None:
    """A relative link of a file in bundled_models[/<folder_name>], as a repository path.

    Links there are written either from the package folder or from the repository's
    ``models/`` link (``../../docs/...``), so both readings are tried."""
    bases = [MODELS, MODELS_LINK]
    if folder_name:
        bases = [MODELS / folder_name, MODELS_LINK / folder_name]
    for base in bases:
        path = Path(os.path.normpath(base / target))
        if path.exists():
            return path
    return None


def rewrite_links(text: str, folder_name: str | None, page_dir: str) -> str:
    """Point a model README's relative links at the site's pages (docs pages, other model
    pages, the training-log index); links to anything else in the repository become the
    repository path in code, since the site holds only docs/."""

    def replace(match: re.Match) -> str:
        bang, label, target = match.group(1), match.group(2), match.group(3)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        path_part, _, anchor = target.partition("#")
        path = _resolve_link(path_part, folder_name)
        if path is None:
            return f"{label} (`{target}`)"
        page = None
        if path.is_relative_to(DOCS):
            relative = path.relative_to(DOCS).as_posix()
            page = TRAINING_LOGS if path.is_dir() and relative == "training" else relative
        elif path.name == "README.md" and path.parent.parent == MODELS:
            page = f"{MODELS_DIR}/{path.parent.name}.md"
        if page is None or Path(DOCS / page).is_dir():
            return f"{label} (`{path.relative_to(REPO).as_posix()}`)"
        href = posixpath.relpath(page, page_dir) + (f"#{anchor}" if anchor else "")
        return f"{bang}[{label}]({href})"

    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", replace, text)


_LIST_ITEM = re.compile(r"^(\s*)([-*]|\d+\.)\s")


def python_markdown_lists(text: str) -> str:
    """Lists written for GitHub, made to render the same in Python-Markdown (MkDocs): a blank
    line before a list that follows a paragraph or a loose list item, and nested lines
    indented by four spaces a level instead of two."""
    out: list[str] = []
    fence = in_list = item_has_blank = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
            if fence:
                in_list = False
            out.append(line)
            continue
        if fence:
            out.append(line)
            continue
        match = _LIST_ITEM.match(line)
        if match and not match.group(1):
            if out and out[-1].strip() and (not in_list or item_has_blank):
                out.append("")
            in_list, item_has_blank = True, False
            out.append(line)
            continue
        if in_list:
            if not line.strip():
                item_has_blank = True
                out.append(line)
                continue
            if line.startswith(" "):
                indent = len(line) - len(line.lstrip(" "))
                out.append(" " * (2 * indent) + line.lstrip(" "))
                continue
            in_list = False
        out.append(line)
    return "\n".join(out)


def _shift_headings(text: str, drop_title: bool) -> tuple[str, str | None]:
    """The README without its first-level title (returned apart)."""
    title = None
    lines = text.splitlines()
    if drop_title and lines and lines[0].startswith("# "):
        title = lines[0][2:].strip()
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n", title


def _spacing(card: dict[str, Any]) -> str:
    expects = card.get("expects") or {}
    spacing = expects.get("spacing_mm") or (card.get("preprocessing") or {}).get("spacing")
    if not spacing:
        spacing = ((card.get("input") or {}).get("preprocessing") or {}).get("spacing")
    return " x ".join(f"{s:g}" for s in spacing) + " mm" if spacing else ""


def _card_rows(name: str, card: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            rows.append([label, value if isinstance(value, str) else escape(value)])

    add("family (`detector`)", code(card.get("detector", "")))
    add("method", escape(card.get("method", "")))
    add("what it gives", escape(card.get("description", "")))
    expects = card.get("expects") or {}
    if expects:
        parts = [
            f"{key}: {code(json_value(value))}"
            for key, value in expects.items()
            if value is not None
        ]
        add("scans it expects (`expects`)", "; ".join(parts))
    add("spacing", _spacing(card))
    architecture = card.get("architecture") or (card.get("backbone") or {}).get("architecture")
    if architecture:
        add(
            "architecture",
            code(architecture.get("type", ""))
            + " "
            + code(json_value({k: v for k, v in architecture.items() if k != "type"})),
        )
    backbone = card.get("backbone")
    if backbone:
        add(
            "backbone",
            "; ".join(
                f"{k}: {code(json_value(v))}" for k, v in backbone.items() if k != "architecture"
            ),
        )
    if card.get("heads"):
        add("heads", ", ".join(code(h) for h in card["heads"]))
        add("default head", code(card.get("default_head", "")))
        add("out-of-distribution below percentile", code(card.get("threshold_percentile", "")))
        add("reference scans", escape(card.get("reference_scans", "")))
    members = card.get("members") or {}
    for role, member in members.items():
        shown = member.get("model", "")
        link = f"[{code(shown)}]({shown}.md)" if shown in model_names() else code(shown)
        add(f"member `{role}`", f"{link}, weights sha256 {code(member.get('sha256', ''))}")
    if card.get("rule"):
        add("fusion rule", code(card["rule"]))
    gate = card.get("gate")
    if gate:
        add("trust gate", f"[{code(gate)}]({gate}.md)" if gate in model_names() else code(gate))
    calibration = card.get("calibration") or {}
    if "voxel_threshold" in calibration:
        flagged = calibration.get("healthy_flagged_ml")
        text = (
            f"voxel threshold {code(calibration['voxel_threshold'])} at healthy voxel FPR "
            f"{code(calibration.get('healthy_voxel_fpr'))}"
        )
        if flagged:
            text += f"; healthy ml flagged there: {escape(', '.join(str(v) for v in flagged))}"
        if calibration.get("made_with"):
            text += f"; holds for maps made with {code(json_value(calibration['made_with']))}"
        add("calibration", text)
    training = card.get("training") or {}
    trained = [
        f"{key}: {escape(training[key])}"
        for key in ("device", "steps_done", "seconds", "precision", "torch")
        if training.get(key) not in (None, "")
    ]
    if isinstance(training.get("init"), dict):
        trained.append(f"started from: {code(training['init'].get('model', ''))}")
    if training.get("command"):
        trained.append(f"command: {code(training['command'])}")
    add("training", "; ".join(trained))
    add("training data licence", escape(training.get("data_licence", "")))
    weights = card.get("weights") or {}
    if weights.get("sha256"):
        parameters = weights.get("parameters")
        add(
            "weights",
            f"{code(weights.get('file', ''))}, sha256 {code(weights['sha256'])}"
            + (f", {parameters:,} parameters" if parameters else ""),
        )
    elif weights:
        add("weights", code(json_value(weights)))
    add("metrics in the card", ", ".join(code(k) for k in (card.get("metrics") or {})))
    return rows


def model_page(name: str) -> str:
    card = read_card(name)
    readme_path = MODELS / name / "README.md"
    title = name
    body = ""
    if readme_path.exists():
        body, readme_title = _shift_headings(readme_path.read_text(), drop_title=True)
        title = readme_title or name
        body = python_markdown_lists(rewrite_links(body, name, MODELS_DIR))
    lines = [
        f"# {escape(title)}",
        "",
        GENERATED_NOTE.format(
            source=f"`src/napari_medood/bundled_models/{name}/card.json` and its `README.md`"
        ),
        "## The card at a glance",
        "",
    ]
    lines += table(["card entry", "value"], _card_rows(name, card))
    recipe = (card.get("training") or {}).get("recipe")
    if body:
        lines += [body]
    else:
        lines += [escape(card.get("description", "")), ""]
    if isinstance(recipe, dict):
        lines += [
            "## Training recipe (the card's `training.recipe`)",
            "",
        ]
        rows = [[code(key), code(json_value(value))] for key, value in recipe.items()]
        lines += table(["key", "value"], rows)
    return "\n".join(lines)


def models_index_page() -> str:
    text = (MODELS / "README.md").read_text()
    body, _ = _shift_headings(text, drop_title=True)
    body = python_markdown_lists(rewrite_links(body, None, MODELS_DIR))
    lines = [
        "# Shipped models",
        "",
        GENERATED_NOTE.format(
            source="`src/napari_medood/bundled_models/README.md` and every model's `card.json`"
        ),
        body,
        "## From the cards",
        "",
    ]
    rows = []
    for name in model_names():
        card = read_card(name)
        expects = card.get("expects") or {}
        calibration = card.get("calibration") or {}
        rows.append(
            [
                f"[{code(name)}]({name}.md)",
                code(card.get("detector", "")),
                escape(expects.get("modality", ""))
                + (f" ({escape(expects['contrast'])})" if expects.get("contrast") else ""),
                _spacing(card),
                code(card["gate"]) if card.get("gate") else "",
                code(f"{calibration['voxel_threshold']:.4g}")
                if "voxel_threshold" in calibration
                else "",
            ]
        )
    lines += table(
        [
            "model",
            "family",
            "scans (`expects`)",
            "spacing",
            "trust gate",
            "calibrated threshold (4 significant digits; exact on its page)",
        ],
        rows,
    )
    return "\n".join(lines)


def training_logs_page() -> str:
    lines = [
        "# Training logs",
        "",
        GENERATED_NOTE.format(source="the files in `docs/training/`"),
        "The CSV logs that the shipped models' training runs wrote (`train_log.csv`, "
        "`val_log.csv`, and the flows' `flow_log.csv`), named after the run. The model cards "
        "say which run made which model.",
        "",
    ]
    rows = [
        [f"[{code(path.name)}](../training/{path.name})", f"{path.stat().st_size:,} bytes"]
        for path in sorted((DOCS / "training").glob("*.csv"))
    ]
    lines += table(["file", "size"], rows)
    return "\n".join(lines)
