"""``medood-train campaign``: the brain suite's members trained on, session after session, in
the background of other work.

A campaign lives in a state folder outside any work tree (``default_state_folder``; a new
machine without it starts again from the shipped weights). It holds:

- ``data/``: the healthy cohort split by subject (the held-out subjects named, or the zoo's
  seeded split), ``train.csv``, and the two validation sets the shipped members were chosen
  by: synthetic outliers (``valset-fpi``, the U-Net's) and real lesion shapes implanted in
  their own and a random contrast (``valset-lesions``, the segmenter's);
- ``<member>/round-NNN/``: one training-spine run each; a round starts from the member's best
  weights so far (the shipped model for the first), with the shipped recipe, a seed of its
  own (other samples every round) and a one-cycle schedule over ``steps`` (a warm restart:
  every round ends annealed). A round stopped halfway goes on where it stopped, its
  ``OUT/last`` saved every ``checkpoint_s`` seconds and at every validation;
- ``<member>/best/``: the best checkpoint of all rounds by the member's validation metric,
  its card's ``training.campaign`` stating the campaign's CPU-hours, steps, samples and
  curve up to it; ``campaign.json`` compares it with the shipped member on the same set;
- ``campaign.json`` (the state) and ``campaign.log`` (a line per validation and per round
  a person can read).

The members take turns by round: the one with the fewest CPU-seconds goes next (a round cut
short by a stop is finished first). CPU-seconds are this process's CPU time (every thread;
the data is drawn in-process on the CPU, so it counts too); on a GPU the wall seconds count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medood._progress import Cancelled, CancelledPredicate, check_cancelled
from napari_medood.errors import MedoodError


@dataclass(frozen=True)
class Member:
    """A member of the brain suite the campaign trains: its ``medood-train`` method and zoo
    stage, the shipped model it starts from and is compared with, the validation set that
    picks its best, and a round's defaults (steps, peak learning rate, steps between
    validations: a validation costs at most a tenth of the steps between two)."""

    method: str
    shipped: str
    valset: str
    round_steps: int
    max_lr: float
    val_interval: int
    compile: bool = False


MEMBERS: dict[str, Member] = {
    # a step of 4 x 64^3 takes ~0.25 s on 2 cores; the 4-case validation ~10 s
    "seg": Member("seg", "brain-any-seg", "valset-lesions", 4000, 5e-4, 250),
    # a step of 4 x 96^3 takes ~3 s on 2 cores; the 12-case validation ~60 s
    # compiled: 1.3-1.5x the steps per second on the CPU (the segmenter gains nothing)
    "unet": Member("unet", "brain-any-unet-gpu", "valset-fpi", 1000, 3e-4, 100, compile=True),
}
STATE_FILE, LOG_FILE, PID_FILE = "campaign.json", "campaign.log", "campaign.pid"
#: the validation sets' seeds. Not 0: the shipped members were picked by their validation on
#: seed 0's sets, so on those their figure is the best of several noisy readings (the
#: shipped segmenter's eight readings on its 4 cases ran from 0.06 to 0.25, and 0.25 was
#: kept); on new draws the shipped and the campaign's models are read alike. Three seeds of
#: implanted lesions (12 cases) make the segmenter's reading less noisy than one (4).
VALSET_SEEDS = (1, 2, 3)


def default_state_folder() -> Path:
    """``$MEDOOD_CAMPAIGN_DIR``, else ``$XDG_CACHE_HOME/napari-medood/campaign`` (by default
    ``~/.cache/napari-medood/campaign``): outside any work tree, kept between sessions."""
    explicit = os.environ.get("MEDOOD_CAMPAIGN_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "napari-medood" / "campaign"


@dataclass
class CampaignSettings:
    """What ``medood-train campaign run`` is told.

    state: the campaign's folder. healthy, masks: the healthy cohort and its parcellations
        (DLMUSE; random contrasts are drawn from them), needed the first time only (the
        state remembers them). held_out: subject names (or their beginnings) kept out of
        training for validation; default: the zoo's seeded fifth.
    members: which members train, in the order ties are broken. device, precision: as for
        ``medood-train``. threads: torch's threads (default: every core; the campaign runs
        at the lowest priority, so other work keeps the machine). hours: stop after that
        many hours of this session (0: when stopped). checkpoint_s: seconds between saves
        of a round's state. yield_cpu: on the CPU, pause while other processes use it
        (``YieldToOtherWork``). overrides: ``member.key=value`` for the members' recipes (and
        ``round_steps``, ``max_lr``, ``val_interval``).
    """

    state: Path = field(default_factory=default_state_folder)
    healthy: str | None = None
    masks: str | None = None
    held_out: Sequence[str] = ()
    members: Sequence[str] = ("seg", "unet")
    device: str = "cpu"
    precision: str = "auto"
    threads: int | None = None
    hours: float = 0.0
    checkpoint_s: float = 300.0
    overrides: Sequence[str] = ()
    yield_cpu: bool = True

    def validate(self) -> CampaignSettings:
        self.state = Path(self.state).expanduser()
        unknown = [m for m in self.members if m not in MEMBERS]
        if unknown or not self.members:
            raise MedoodError(
                f"campaign members are {', '.join(MEMBERS)}; got {', '.join(unknown) or 'none'}"
            )
        if not self.hours >= 0 or not self.checkpoint_s > 0:
            raise MedoodError("--hours must be >= 0 and checkpoint_s > 0")
        if self.threads is not None and self.threads < 1:
            raise MedoodError(f"--threads must be >= 1, not {self.threads}")
        for item in self.overrides:
            key = item.split("=", 1)[0]
            if "=" not in item or "." not in key or key.split(".", 1)[0] not in MEMBERS:
                raise MedoodError(
                    f"--set {item!r}: give MEMBER.KEY=VALUE, MEMBER one of {', '.join(MEMBERS)}"
                )
        return self

    def member_overrides(self, member: str) -> dict[str, str]:
        return {
            item.split("=", 1)[0].split(".", 1)[1]: item.split("=", 1)[1]
            for item in self.overrides
            if item.split(".", 1)[0] == member
        }


# -- the state --------------------------------------------------------------------------


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise MedoodError(f"{path}: not a campaign state ({exc}); move the folder away") from None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    from napari_medood.io.atomic import write_text_atomic

    write_text_atomic(folder / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n")


class CampaignLog:
    """``campaign.log``: one line per event, with the local time."""

    def __init__(self, folder: Path, echo: Callable[[str], None] | None = None):
        self.path, self.echo = folder / LOG_FILE, echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.echo is not None:
            self.echo(line)


def _cpu_seconds() -> float:
    return time.process_time()


def _machine_busy_seconds() -> float | None:
    """CPU-seconds every process of the machine has used since boot (Linux: /proc/stat),
    None where that cannot be read."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class YieldToOtherWork:
    """Pauses the campaign while other processes use the CPU (tests, benchmarks, a build):
    a low priority alone is not enough, since a training step's threads that get a core now
    and then hold back, and slow, the work they share the cores with (measured: a U-Net step
    timed beside a nice-19 campaign took 2.8x its time alone). Every ``every`` seconds it
    compares the machine's CPU time with this process's own; where other processes used more
    than ``cores`` of a core, it sleeps until they have used less for ``calm`` seconds."""

    def __init__(self, cores: float = 0.3, every: float = 2.0, calm: float = 10.0, log=None):
        self.cores, self.every, self.calm, self.log = cores, every, calm, log
        self.paused_s = 0.0
        self._mark = self._reading()

    def _reading(self) -> tuple[float, float, float] | None:
        machine = _machine_busy_seconds()
        if machine is None:
            return None
        return time.monotonic(), machine, _cpu_seconds()

    def others(self, since) -> float:
        """Cores other processes used on average since the reading ``since``."""
        now = self._reading()
        wall = max(now[0] - since[0], 1e-6)
        return max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / wall

    def __call__(self, should_stop: Callable[[], bool] | None = None) -> None:
        if self._mark is None or time.monotonic() - self._mark[0] < self.every:
            return
        busy = self.others(self._mark)
        self._mark = self._reading()
        if busy <= self.cores:
            return
        paused_at, calm_since = time.monotonic(), None
        while not (should_stop is not None and should_stop()):
            mark = self._reading()
            time.sleep(self.every)
            if self.others(mark) > self.cores:
                calm_since = None
            elif calm_since is None:
                calm_since = time.monotonic()
            elif time.monotonic() - calm_since >= self.calm:
                break
        waited = time.monotonic() - paused_at
        self.paused_s += waited
        self._mark = self._reading()
        if self.log is not None and waited >= 30:
            self.log(f"paused {waited:.0f} s while other work used the CPU ({busy:.1f} cores)")


# -- the data -----------------------------------------------------------------------------


def prepare_data(
    settings: CampaignSettings, state: dict, log, cancelled: CancelledPredicate | None = None
) -> dict:
    """The split and the validation sets, made once; a later session with other data is
    refused rather than mixed in."""
    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set
    from napari_medood.training.zoo import (
        _write_table,
        is_parcellation,
        split_cohort,
    )

    data = state.get("data")
    if data is not None:
        for key, given in (("healthy", settings.healthy), ("masks", settings.masks)):
            if given and str(Path(given).resolve()) != data[key]:
                raise MedoodError(
                    f"{settings.state}: this campaign trains on {data[key]}, not {given}; give "
                    "another --state to start a campaign on other data"
                )
        if all(Path(settings.state, p).exists() for p in data["valsets"].values()):
            return data
    elif not settings.healthy or not settings.masks:
        raise MedoodError(
            f"{settings.state}: no campaign here yet; give the healthy scans and --mask "
            "(their parcellations) to start one"
        )
    healthy = settings.healthy or data["healthy"]
    masks = settings.masks or data["masks"]
    cases = discover_cases(Path(healthy), masks=Path(masks))
    if not cases:
        raise MedoodError(f"{healthy}: no scans found")
    parcellated = is_parcellation(cases[0].mask)
    if not parcellated:
        raise MedoodError(
            f"{masks}: the campaign trains the any-contrast members, which draw random "
            "contrasts from parcellations (DLMUSE, say); these are brain masks"
        )
    held_out = tuple(settings.held_out or (data or {}).get("held_out_names") or ())
    if held_out:
        held = [c for c in cases if c.name.startswith(held_out)]
        train = [c for c in cases if not c.name.startswith(held_out)]
        if not held or not train:
            raise MedoodError(
                f"--held-out {','.join(held_out)}: leaves {len(train)} scans to train on and "
                f"{len(held)} to validate on; both need at least one"
            )
    else:
        train, held = split_cohort(cases, 0.2, 0)
    folder = settings.state / "data"
    header = ["Name", "Path", "Mask"]
    rows = [[c.name, c.image.resolve(), c.mask.resolve()] for c in train]
    train_csv = _write_table(folder / "train.csv", header, rows)
    sources = sorted(held, key=lambda c: c.name)
    log(f"data: {len(train)} scans train, {len(held)} validate ({', '.join(c.name for c in held)})")
    check_cancelled(cancelled)
    build_validation_set(sources, folder / "valset-fpi", ValidationSetConfig(seed=VALSET_SEEDS[0]))
    lesions = lesion_validation_set(sources, folder / "valset-lesions", cancelled)
    data = {
        "healthy": str(Path(healthy).resolve()),
        "masks": str(Path(masks).resolve()),
        "held_out_names": list(held_out),
        "train": [c.name for c in train],
        "held_out": [c.name for c in held],
        "valset_seeds": list(VALSET_SEEDS),
        "train_csv": str(train_csv.relative_to(settings.state)),
        "valsets": {
            "valset-fpi": "data/valset-fpi",
            "valset-lesions": str(lesions.relative_to(settings.state)),
        },
    }
    state["data"] = data
    return data


def lesion_validation_set(sources, folder: Path, cancelled=None) -> Path:
    """Real lesion shapes implanted into the held-out scans once per seed of
    ``VALSET_SEEDS`` (each scan in its own and a random contrast: 4 cases a seed from two
    subjects), as one table."""
    import csv

    from napari_medood.training.zoo import _write_table, implanted_lesion_set

    rows, header = [], None
    for seed in VALSET_SEEDS:
        check_cancelled(cancelled)
        table = implanted_lesion_set(sources, folder / f"seed-{seed}", True, seed)
        with open(table, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            for row in reader:
                paths = {"Path", "Mask", "Label"}
                rows.append(
                    [
                        f"seed-{seed}/{value}" if name in paths and value else value
                        for name, value in zip(header, row, strict=True)
                    ]
                )
                rows[-1][0] = f"{row[0]}_seed{seed}"
    return _write_table(folder / "cases.csv", header, rows)


# -- the members' rounds ------------------------------------------------------------------


def member_config(settings: CampaignSettings, state: dict, name: str, entry: dict):
    """The configuration of a round (``entry``) of member ``name``: the zoo's recipe of it
    (the shipped one, on parcellations), its name and description the shipped model's, from
    the round's ``init``, with the ``--set`` overrides the round began with (a round resumes
    with the recipe it started with, whatever a later session is told)."""
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.config import load_config
    from napari_medood.training.registry import get_trainer
    from napari_medood.training.zoo import _override, recipe

    member = MEMBERS[name]
    data = state["data"]
    number, init = entry["round"], entry["init"]
    values = recipe(member.method, True, True, 0, len(data["train"]))
    shipped = Checkpoint.open(member.shipped).card
    values.update(
        name=member.shipped,
        description=shipped.get("description", values["description"]),
        init=init,
        steps=member.round_steps,
        max_lr=member.max_lr,
        val_interval=member.val_interval,
        log_interval=25,
        seed=number,
        checkpoint_s=settings.checkpoint_s,
        compile=member.compile,
        device=settings.device,
        precision=settings.precision,
        # on the CPU the data is drawn in-process: counted in the CPU time, and no loader
        # processes compete with the network for the cores
        workers=0 if settings.device == "cpu" else values["workers"],
    )
    overrides = [_override(k, v) for k, v in values.items()]
    extra = dict(entry.get("set", {}))
    for key in ("round_steps", "max_lr", "val_interval"):
        if key in extra:
            overrides.append(f"{'steps' if key == 'round_steps' else key}={extra.pop(key)}")
    overrides += [f"{k}={v}" for k, v in extra.items()]
    round_folder = settings.state / name / f"round-{number:03d}"
    valset = settings.state / data["valsets"][member.valset]
    overrides += [
        f"train={settings.state / data['train_csv']}",
        f"val={valset}",
        f"out={round_folder}",
    ]
    return load_config(None, overrides, get_trainer(member.method).config)


def _card(folder: Path) -> dict | None:
    path = folder / "card.json"
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_figure(
    settings: CampaignSettings, state: dict, name: str, cancelled=None
) -> dict[str, Any]:
    """The shipped member's validation figures on the campaign's own set (once: the yardstick
    a candidate must beat)."""
    from napari_medood.detectors import DetectorOptions, get_detector
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.data import training_cases

    member = MEMBERS[name]
    checkpoint = Checkpoint.open(member.shipped)
    sha = checkpoint.card["weights"].get("sha256")
    known = state.setdefault("members", {}).setdefault(name, {}).get("shipped")
    if known and known.get("sha256") == sha and known.get("precision") == settings.precision:
        return known
    cases = training_cases(str(settings.state / state["data"]["valsets"][member.valset]))
    detector = get_detector(
        member.shipped,
        DetectorOptions(device=settings.device, precision=settings.precision, gate=False),
    )
    result = evaluate(
        cases, DetectorPredictions(detector), options=EvalOptions(bootstrap=0, fprs=())
    )
    figure = {
        "model": member.shipped,
        "sha256": sha,
        "precision": settings.precision,
        "pixel_ap": result.pixel.get("ap"),
        "pixel_auroc": result.pixel.get("auroc"),
        "cases": len(cases),
    }
    state["members"][name]["shipped"] = figure
    return figure


def _rounds(state: dict, name: str) -> list[dict]:
    return state.setdefault("members", {}).setdefault(name, {}).setdefault("rounds", [])


def totals(state: dict, name: str) -> dict[str, float]:
    rounds = state.get("members", {}).get(name, {}).get("rounds", [])
    return {
        key: sum(r.get(key, 0) for r in rounds)
        for key in ("cpu_s", "wall_s", "steps_done", "samples")
    }


def next_member(settings: CampaignSettings, state: dict) -> str:
    """A member with an unfinished round first, else the one with the fewest CPU-seconds."""
    for name in settings.members:
        rounds = _rounds(state, name)
        if rounds and not rounds[-1].get("finished"):
            return name
    return min(settings.members, key=lambda n: totals(state, n)["cpu_s"])


def curve(settings: CampaignSettings, state: dict, name: str) -> list[dict]:
    """Every validation of the member's rounds: ``{round, step, steps, cpu_hours, metric}``,
    ``steps`` and ``cpu_hours`` counted over the campaign (CPU time shared out over a
    round's steps evenly)."""
    import csv

    points, steps_before, cpu_before = [], 0, 0.0
    for entry in _rounds(state, name):
        log = settings.state / entry["folder"] / "val_log.csv"
        done = max(int(entry.get("steps_done", 0)), 1)
        if log.is_file():
            with open(log) as handle:
                for row in csv.DictReader(handle):
                    step = int(row["step"])
                    value = row.get("pixel_ap")
                    points.append(
                        {
                            "round": entry["round"],
                            "step": step,
                            "steps": steps_before + step,
                            "cpu_hours": round(
                                (cpu_before + entry.get("cpu_s", 0.0) * min(step / done, 1)) / 3600,
                                3,
                            ),
                            "pixel_ap": float(value) if value not in (None, "") else None,
                        }
                    )
        steps_before += int(entry.get("steps_done", 0))
        cpu_before += entry.get("cpu_s", 0.0)
    return points


def promote(settings: CampaignSettings, state: dict, name: str, entry: dict, log) -> bool:
    """Make the round's best the member's best where its validation beats the member's best
    so far (and so every earlier round); its card records the campaign up to it."""
    round_best = settings.state / entry["folder"] / "best"
    card = _card(round_best)
    if card is None:
        return False
    validation = card.get("metrics", {}).get("validation", {})
    value = validation.get("pixel_ap")
    if value is None or not math.isfinite(float(value)):
        return False
    record = state["members"][name]
    best = record.get("best")
    if best is not None and float(value) <= best["pixel_ap"]:
        return False
    sums = totals(state, name)
    points = curve(settings, state, name)
    at = next(
        (p for p in points if p["round"] == entry["round"] and p["step"] == validation["step"]),
        {"steps": sums["steps_done"], "cpu_hours": round(sums["cpu_s"] / 3600, 3)},
    )
    shipped = record.get("shipped", {})
    card["training"]["campaign"] = {
        "round": entry["round"],
        "step_in_round": validation.get("step"),
        "steps": at["steps"],
        "samples": at["steps"] * int(entry.get("batch_size", 4)),
        "cpu_hours": at["cpu_hours"],
        "device": settings.device,
        "started_from": state["members"][name]["rounds"][0]["init"],
        "validation_pixel_ap": float(value),
        "shipped_validation_pixel_ap": shipped.get("pixel_ap"),
        "curve": [
            [p["steps"], p["cpu_hours"], p["pixel_ap"]] for p in points if p["steps"] <= at["steps"]
        ],
        "command": "medood-train campaign (napari-medood)",
    }
    target = settings.state / name / "best"
    staging = settings.state / name / "best.part"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(round_best, staging)
    from napari_medood.io.atomic import write_text_atomic

    write_text_atomic(staging / "card.json", json.dumps(card, indent=1) + "\n")
    old = settings.state / name / "best.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    record["best"] = {
        "round": entry["round"],
        "step": validation.get("step"),
        "pixel_ap": float(value),
        "steps": at["steps"],
        "cpu_hours": at["cpu_hours"],
        "folder": f"{name}/best",
    }
    versus = f" (shipped {shipped['pixel_ap']:.4f})" if shipped.get("pixel_ap") is not None else ""
    log(
        f"{name}: new best, validation pixel AP {float(value):.4f}{versus}, round "
        f"{entry['round']} step {validation.get('step')}, {at['cpu_hours']:.2f} CPU-h"
    )
    return True


@dataclass
class CampaignResult:
    state: dict
    rounds_run: int
    stopped: bool


def run_campaign(
    settings: CampaignSettings,
    cancelled: CancelledPredicate | None = None,
    echo: Callable[[str], None] | None = None,
) -> CampaignResult:
    """Train the members round after round until ``cancelled`` (a signal) or ``hours``;
    every stop keeps what was done, and the next call goes on from there."""
    from napari_medood.training.registry import get_trainer

    settings.validate()
    settings.state.mkdir(parents=True, exist_ok=True)
    log = CampaignLog(settings.state, echo)
    state = read_state(settings.state)
    started_wall = time.monotonic()
    yielding = (
        YieldToOtherWork(log=log) if settings.device == "cpu" and settings.yield_cpu else None
    )

    def should_stop() -> bool:
        if settings.hours and time.monotonic() - started_wall >= settings.hours * 3600:
            return True
        return bool(cancelled is not None and cancelled())

    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": settings.device,
        "threads": settings.threads,
    }
    state.setdefault("sessions", []).append(session)
    rounds_run, stopped = 0, False
    try:
        prepare_data(settings, state, log, should_stop)
        write_state(settings.state, state)
        for name in settings.members:
            check_cancelled(should_stop)
            figure = shipped_figure(settings, state, name)
            write_state(settings.state, state)
            log(f"{name}: shipped {figure['model']} validates at pixel AP {figure['pixel_ap']:.4f}")
        while not should_stop():
            name = next_member(settings, state)
            rounds = _rounds(state, name)
            if rounds and not rounds[-1].get("finished"):
                entry = rounds[-1]
            else:
                best = state["members"][name].get("best")
                init = str(settings.state / best["folder"]) if best else MEMBERS[name].shipped
                entry = {
                    "round": len(rounds) + 1,
                    "folder": f"{name}/round-{len(rounds) + 1:03d}",
                    "init": init,
                    "cpu_s": 0.0,
                    "wall_s": 0.0,
                    "steps_done": 0,
                    "samples": 0,
                    "finished": False,
                    "set": settings.member_overrides(name),
                }
                rounds.append(entry)
            config = member_config(settings, state, name, entry)
            entry.update(steps=config.steps, batch_size=config.batch_size, max_lr=config.max_lr)
            write_state(settings.state, state)
            log(
                f"{name}: round {entry['round']} {'resumed at step ' + str(entry['steps_done']) if entry['steps_done'] else 'from ' + entry['init']} "
                f"({config.steps} steps of {config.batch_size}, peak lr {config.max_lr:g})"
            )
            cpu0, wall0 = _cpu_seconds(), time.monotonic()
            logged = {"step": entry["steps_done"]}

            def progress(
                done: int,
                total: int,
                message: str,
                name=name,
                entry=entry,
                logged=logged,
                every=config.val_interval,
            ):
                # the spine reports a step before validating it: read the log one step on
                if done > 1 and (done - 1) % every == 0:
                    _log_validations(settings, name, entry, logged, log)
                if yielding is not None:
                    yielding(should_stop)

            try:
                get_trainer(MEMBERS[name].method).run(config, progress, should_stop)
                entry["finished"] = True
                _log_validations(settings, name, entry, logged, log)
            except Cancelled:
                stopped = True
            finally:
                used_cpu, used_wall = _cpu_seconds() - cpu0, time.monotonic() - wall0
                entry["cpu_s"] = round(
                    entry["cpu_s"] + (used_wall if settings.device != "cpu" else used_cpu), 1
                )
                entry["wall_s"] = round(entry["wall_s"] + used_wall, 1)
                last = _card(settings.state / entry["folder"] / "last") or {}
                entry["steps_done"] = int(
                    last.get("training", {}).get("steps_done", entry["steps_done"])
                )
                entry["samples"] = entry["steps_done"] * config.batch_size
                promote(settings, state, name, entry, log)
                write_state(settings.state, state)
                prune(settings, name, entry)
            rounds_run += 1
            sums = totals(state, name)
            log(
                f"{name}: round {entry['round']} {'finished' if entry['finished'] else 'stopped'} at "
                f"step {entry['steps_done']}; {name} in all: {sums['steps_done']:.0f} steps, "
                f"{sums['cpu_s'] / 3600:.2f} CPU-h"
            )
    except Cancelled:
        stopped = True
    finally:
        session["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if yielding is not None:
            session["paused_s"] = round(yielding.paused_s, 1)
        write_state(settings.state, state)
        log("stopped; the same command goes on from here" if stopped or should_stop() else "done")
    return CampaignResult(state, rounds_run, stopped or should_stop())


def _log_validations(settings: CampaignSettings, name: str, entry: dict, logged: dict, log):
    """A line in ``campaign.log`` for each validation of the round after ``logged["step"]``."""
    import csv

    path = settings.state / entry["folder"] / "val_log.csv"
    if not path.is_file():
        return
    with open(path) as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) > logged["step"]]
    for row in rows:
        value = row.get("pixel_ap")
        shown = f"{float(value):.4f}" if value not in (None, "") else "none"
        log(f"{name}: round {entry['round']} step {row['step']}: validation pixel AP {shown}")
        logged["step"] = int(row["step"])


def prune(settings: CampaignSettings, name: str, entry: dict) -> None:
    """A finished round's weights go (its logs stay): its best, where better than the
    member's, was copied to the member's best, and nothing resumes from its last."""
    if not entry.get("finished"):
        return
    for sub in ("best", "last"):
        shutil.rmtree(settings.state / entry["folder"] / sub, ignore_errors=True)


# -- reading a campaign -------------------------------------------------------------------


def status_lines(folder: Path) -> list[str]:
    """What a person reads of a campaign: each member's rounds, steps, samples, CPU-hours,
    the shipped and the best validation, and the end of its curve."""
    state = read_state(folder)
    if not state:
        return [f"{folder}: no campaign yet"]
    settings = CampaignSettings(state=folder)
    lines = [f"campaign in {folder}"]
    running = running_pid(folder)
    lines.append(f"  running: pid {running}" if running else "  not running")
    for name, record in state.get("members", {}).items():
        sums = totals(state, name)
        shipped = record.get("shipped", {})
        best = record.get("best")
        rounds = record.get("rounds", [])
        ongoing = rounds[-1] if rounds and not rounds[-1].get("finished") else None
        current = _current_step(folder, ongoing) if ongoing else None
        lines.append(
            f"  {name}: {len(rounds)} round(s), {sums['steps_done']:.0f} steps, "
            f"{sums['samples']:.0f} samples, {sums['cpu_s'] / 3600:.2f} CPU-h "
            f"({sums['wall_s'] / 3600:.2f} h on the clock)"
        )
        if current:
            lines.append(
                f"    round {ongoing['round']} at step {current} of {ongoing.get('steps', '?')} "
                "(in the figures above once it stops or ends)"
            )
        if shipped.get("pixel_ap") is not None:
            lines.append(
                f"    shipped {shipped['model']}: validation pixel AP {shipped['pixel_ap']:.4f}"
            )
        if best:
            verdict = (
                f"{best['pixel_ap'] - shipped['pixel_ap']:+.4f} against the shipped model"
                if shipped.get("pixel_ap") is not None
                else "no shipped figure"
            )
            lines.append(
                f"    best: {best['pixel_ap']:.4f} (round {best['round']}, step {best['step']}, "
                f"{best['cpu_hours']:.2f} CPU-h): {verdict}; {folder / best['folder']}"
            )
        points = curve(settings, state, name)[-6:]
        if points:
            lines.append(
                "    curve (steps: AP): "
                + ", ".join(
                    f"{p['steps']}: {p['pixel_ap']:.3f}"
                    for p in points
                    if p["pixel_ap"] is not None
                )
            )
    return lines


def _current_step(folder: Path, entry: dict) -> int | None:
    """The last logged step of a round in progress (its train_log.csv)."""
    path = folder / entry["folder"] / "train_log.csv"
    if not path.is_file():
        return None
    lines = path.read_text().strip().splitlines()
    try:
        return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else None
    except ValueError:
        return None


def running_pid(folder: Path) -> int | None:
    """The pid of the campaign running on ``folder``, None when none is."""
    path = folder / PID_FILE
    if not path.is_file():
        return None
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"campaign" not in cmdline.read_bytes():
        return None  # the pid was reused by another program
    return pid
