"""Claims: one process computes a case at a time, however many runs write one OUTPUT folder.

Before a process computes a case it claims the case's output name: a small JSON file in
``OUTPUT/.medood`` (``<output name>.claim.json``) naming the host, the process id, the
process's start time and the machine's boot time. The claim appears whole: it is written
aside and hard-linked into place, which fails if another claim is there (file systems
without hard links get an exclusive create instead). A claim is stale when its process has
ended: on this host the pid is gone, belongs to a process started at another time (a pid
reused after a kill), or the machine has rebooted since. A stale claim is retired by a
rename, which only one process can win. A claim from another host cannot be checked from
here and is respected; the run that meets it says so and ends unfinished.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

from napari_medood.io.mood import record_path

#: an empty or unreadable claim younger than this may be one being created (file systems
#: without hard links write it in place); older, it is a leftover
CREATING_S = 60.0


def _this_process() -> dict:
    import psutil

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        "boot": psutil.boot_time(),
    }


def _has_ended(holder: dict) -> bool:
    """Has the process that made ``holder`` ended? Only a claim of this host can tell."""
    import psutil

    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder["pid"])
    if "boot" in holder and abs(float(holder["boot"]) - psutil.boot_time()) > 2:
        return True  # made before the machine last started
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # another user's live process
        return False
    return "started" in holder and abs(started - float(holder["started"])) > 1


def _describe(holder: dict) -> str:
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"


def claim_holder(target: str | os.PathLike) -> str | None:
    """Who is computing ``target`` now ("process 123 on host"), or None: no claim, or a
    stale one (retired here)."""
    claim = record_path(target, "claim")
    try:
        seen = claim.stat()
        text = claim.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:  # another user's claim this user cannot read: it holds
        return f"another user's process ({claim} cannot be read)"
    try:
        holder = json.loads(text)
        stale = _has_ended(holder)
    except (ValueError, KeyError, TypeError):  # not whole: being created, or a leftover
        if time.time() - seen.st_mtime < CREATING_S:
            return f"a process creating {claim.name}"
        stale = True
        holder = {}
    if not stale:
        return _describe(holder)
    return None if _retire(claim, seen) else "another process"


def _retire(claim: Path, seen: os.stat_result) -> bool:
    """Move a stale claim out of the way; False if what was moved is a fresh claim another
    process made meanwhile (it is put back)."""
    aside = claim.with_name(f".retired-{uuid.uuid4().hex}")
    try:
        os.rename(claim, aside)
    except FileNotFoundError:  # another process retired it first
        return True
    try:
        if os.stat(aside).st_ino != seen.st_ino:  # a fresh claim: hand it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, claim)
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)


def _place(claim: Path, text: str) -> bool:
    """Put a claim holding ``text`` at ``claim`` if none is there (True: placed)."""
    handle, temp = tempfile.mkstemp(prefix=".claim-", dir=claim.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, 0o644)  # other users sharing the folder can read who holds it
        try:
            os.link(temp, claim)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (FAT, some network mounts): create in place
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
            return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def claim_case(target: str | os.PathLike) -> str | None:
    """Claim the case whose output is ``target`` for this process. None: claimed; else who
    holds it."""
    claim = record_path(target, "claim")
    text = json.dumps(_this_process())
    for _ in range(4):  # retries: a stale claim retired, the records folder removed meanwhile
        holder = claim_holder(target)
        if holder is not None:
            return holder
        claim.parent.mkdir(parents=True, exist_ok=True)
        try:
            if _place(claim, text):
                return None
        except FileNotFoundError:  # the records folder went between mkdir and the write
            continue
    return claim_holder(target) or "another process"


def release_case(target: str | os.PathLike) -> None:
    """Give up this process's claim on ``target`` (never another's)."""
    claim = record_path(target, "claim")
    try:
        holder = json.loads(claim.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
        claim.unlink(missing_ok=True)
