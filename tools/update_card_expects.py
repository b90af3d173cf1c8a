"""Write a checkpoint card's ``expects`` entry (and its family) from its training scans.

    python tools/update_card_expects.py models/brain-t1-unet [--shared ../shared/data]

Training writes ``expects`` itself (``training.data.expected_scans``); this tool computes the
same entry, with the same functions, for a card trained before cards carried it: the scans
named in the card's ``training.data`` are read from the shared IXI folder with their DLMUSE
brain masks. The weights and their sha256 are not touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.cohort import discover_cases
    from napari_medood.models.checkpoint import read_card
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import expected_scans, prepare_scans

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    card = read_card(args.checkpoint)
    ixi = args.shared / "ixi-t1-2mm"
    names = set(card["training"]["data"])
    cases = [c for c in discover_cases(ixi / "t1", masks=ixi / "dlmuse") if c.name in names]
    if len(cases) != len(names):
        raise SystemExit(f"found {len(cases)} of the card's {len(names)} training scans")
    space = ModelSpace.from_card(card["preprocessing"])
    scans = prepare_scans(cases, space)
    card["expects"] = expected_scans(scans, space, "MR", "T1w")
    raw = json.loads((args.checkpoint / "card.json").read_text())
    ordered = {"name": raw["name"], "detector": card["detector"]}
    ordered.update({k: v for k, v in raw.items() if k not in ordered})
    ordered.pop("outputs", None)
    ordered["expects"] = card["expects"]
    ordered["card_version"] = 2
    write_text_atomic(args.checkpoint / "card.json", json.dumps(ordered, indent=1) + "\n")
    print(json.dumps(card["expects"]))


if __name__ == "__main__":
    main()
