"""``medood-train campaign``: the brain members trained on in the background, session after
session (``training.campaign``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from napari_medood.cli._common import EXIT_OK, add_precision_option, make_parser, run_command, say

PROG = "medood-train campaign"
ACTIONS = ("start", "stop", "status", "run")
EPILOG = """\
actions:
  start   run the campaign in the background at the lowest CPU priority, and return
  stop    stop it (it saves where it is: a round goes on at the next start) and show its status
  status  each member's rounds, steps, CPU-hours, validation curve and best checkpoint
  run     run it in this terminal (what start runs; Ctrl-C stops it the same way)

the first start needs the healthy scans and their parcellations; later ones remember them:
  medood-train campaign start --healthy ../shared/data/ixi-t1-2mm/t1 \\
      --mask ../shared/data/ixi-t1-2mm/dlmuse --held-out IXI039,IXI048
  medood-train campaign stop

on a GPU, in the foreground for a set time:
  medood-train campaign run --device cuda --hours 0.2

the state (data split, validation sets, rounds, best checkpoints, campaign.log) is kept in
--state, by default $MEDOOD_CAMPAIGN_DIR or ~/.cache/napari-medood/campaign. A member's best
checkpoint (STATE/MEMBER/best) is a model folder: medood-predict --model STATE/seg/best.
"""


def build_parser() -> argparse.ArgumentParser:
    from napari_medood.training.campaign import MEMBERS

    parser = make_parser(
        PROG,
        "Train the brain suite's members (the lesion segmenter and the anomaly U-Net of "
        "brain-any) on and on, in the background of other work: round after round from their "
        "best weights, validated on held-out scans, the best kept.",
        EPILOG,
    )
    parser.add_argument("action", choices=ACTIONS, metavar="ACTION", help=", ".join(ACTIONS))
    parser.add_argument(
        "--healthy",
        metavar="SCANS",
        help="the healthy scans: a folder, a CSV with Path and Mask columns, or BIDS (first start)",
    )
    parser.add_argument("--mask", metavar="PATH", help="their parcellations (first start)")
    parser.add_argument(
        "--held-out",
        metavar="NAMES",
        help="comma-separated subject names (or their beginnings) to validate on, never "
        "trained on (first start; default: a seeded fifth of the subjects)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        help="the campaign's folder (default: $MEDOOD_CAMPAIGN_DIR, else "
        "~/.cache/napari-medood/campaign)",
    )
    parser.add_argument(
        "--members",
        default=",".join(MEMBERS),
        help=f"which members train, comma-separated ({', '.join(MEMBERS)})",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), or cuda where a GPU is lent"
    )
    add_precision_option(parser)
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (default: every core; the campaign yields to other work anyway)",
    )
    parser.add_argument(
        "--hours", type=float, default=0.0, help="stop after this many hours (0: when stopped)"
    )
    parser.add_argument(
        "--nice", type=int, default=19, help="CPU priority of the training process (start, run)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MEMBER.KEY=VALUE",
        help="a member's recipe key, or round_steps, max_lr, val_interval: --set seg.round_steps=2000",
    )
    parser.add_argument(
        "--no-yield",
        action="store_true",
        help="keep training while other processes use the CPU (by default it pauses until "
        "they are done)",
    )
    parser.add_argument(
        "--wait", type=float, default=900.0, help="stop: seconds to wait for it to save and end"
    )
    return parser


def _settings(args: argparse.Namespace):
    from napari_medood.training.campaign import CampaignSettings, default_state_folder

    return CampaignSettings(
        state=args.state or default_state_folder(),
        healthy=args.healthy,
        masks=args.mask,
        held_out=tuple(n.strip() for n in (args.held_out or "").split(",") if n.strip()),
        members=tuple(m.strip() for m in args.members.split(",") if m.strip()),
        device=args.device,
        precision=args.precision or "auto",
        threads=args.threads,
        hours=args.hours,
        overrides=tuple(args.set),
        yield_cpu=not args.no_yield,
    ).validate()


def _campaign(args: argparse.Namespace) -> int:
    from napari_medood.errors import MedoodError
    from napari_medood.training.campaign import running_pid, status_lines

    settings = _settings(args)
    folder = settings.state
    if args.action == "status":
        print("\n".join(status_lines(folder)))
        return EXIT_OK
    if args.action == "stop":
        pid = running_pid(folder)
        if pid is None:
            say(PROG, f"no campaign is running on {folder}")
        else:
            os.kill(pid, signal.SIGTERM)
            say(PROG, f"stopping pid {pid} (it saves where it is; up to {args.wait:.0f} s)")
            deadline = time.monotonic() + args.wait
            while running_pid(folder) == pid and time.monotonic() < deadline:
                time.sleep(1.0)
            if running_pid(folder) == pid:
                raise MedoodError(
                    f"pid {pid} has not ended after {args.wait:.0f} s (a validation may still be "
                    "running); run stop again, or see its log in " + str(folder / "campaign.log")
                )
        print("\n".join(status_lines(folder)))
        return EXIT_OK
    running = running_pid(folder)
    if running is not None:
        raise MedoodError(f"a campaign already runs on {folder} (pid {running}); stop it first")
    if args.action == "start":
        return _start(args, folder)
    return _run(args, settings)


def _start(args: argparse.Namespace, folder: Path) -> int:
    """The same command with ``run``, detached, its output in ``STATE/campaign.out``."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["run"]
    for option, value in (
        ("--healthy", args.healthy and str(Path(args.healthy).resolve())),
        ("--mask", args.mask and str(Path(args.mask).resolve())),
        ("--held-out", args.held_out),
        ("--state", str(folder.resolve())),
        ("--members", args.members),
        ("--device", args.device),
        ("--precision", args.precision),
        ("--threads", args.threads),
        ("--hours", args.hours),
        ("--nice", args.nice),
        ("--no-yield", "" if args.no_yield else None),
        *(("--set", item) for item in args.set),
    ):
        if value == "":
            argv.append(option)
        elif value is not None:
            argv += [option, str(value)]
    # idle threads sleep rather than spin, leaving the cores to other work at once
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "napari_medood.cli.campaign", *argv]
    with open(folder / "campaign.out", "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    time.sleep(3.0)  # a refusal (no data, a bad --set) ends it at once: say so here
    if process.poll() is not None:
        tail = (folder / "campaign.out").read_text(errors="replace").strip().splitlines()[-3:]
        from napari_medood.errors import MedoodError

        raise MedoodError("the campaign ended at once: " + " / ".join(tail))
    say(
        PROG,
        f"running in the background (pid {process.pid}, nice {args.nice}); log: "
        f"{folder / 'campaign.log'}; stop it with: medood-train campaign stop"
        + (f" --state {folder}" if args.state else ""),
    )
    return EXIT_OK


def _run(args: argparse.Namespace, settings) -> int:
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.training.campaign import PID_FILE, run_campaign

    if args.nice and hasattr(os, "nice"):
        os.nice(max(0, args.nice - os.nice(0)))
    settings.state.mkdir(parents=True, exist_ok=True)
    pid_file = settings.state / PID_FILE
    write_text_atomic(pid_file, json.dumps({"pid": os.getpid(), "started": time.time()}) + "\n")
    stop = {"asked": False}

    def on_signal(signum, frame):  # noqa: ARG001 - the signal module's signature
        stop["asked"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        result = run_campaign(settings, lambda: stop["asked"], echo=print)
    finally:
        pid_file.unlink(missing_ok=True)
    say(
        PROG, f"{result.rounds_run} round(s) run this session; status: medood-train campaign status"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, build_parser(), _campaign, argv)


if __name__ == "__main__":
    sys.exit(main())
