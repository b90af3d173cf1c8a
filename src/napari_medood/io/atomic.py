"""Write files atomically: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    The temporary file keeps ``suffix`` so that libraries which pick a format from the name
    (nibabel: ``.nii.gz``) write the right one. On error the temporary file is removed and
    ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        # mkstemp creates the file as 0600; give it the mode a plain open() would have.
        os.chmod(temp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[Path], None],
    suffix: str = "",
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Call ``write(temp_path)`` and move the result onto ``path`` atomically; with
    ``check``, only if ``check(temp_path)`` finds nothing wrong (else a MedoodError naming
    ``path`` and the problem, and ``path`` is left as it was)."""
    from napari_medood.errors import MedoodError

    with atomic_path(path, suffix) as temp:
        write(temp)
        problem = check(temp) if check is not None else None
        if problem is not None:
            raise MedoodError(f"{path}: not written: what was written {problem}")
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (a sample score, a manifest) atomically."""
    return write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
