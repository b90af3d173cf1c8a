"""An LMDB cache of axial slices laid out like UAD-IMAG's (methods.md R23), for 2D methods.

One database named ``slices``; keys are running indices as 8-digit zero-padded ASCII
("00000000", ...); each value is a pickled 2D float64 array: one axial slice (third array axis)
of a volume min-max normalised to [0, 1], all-zero slices left out. Reading uses an
unpickler that only rebuilds numpy arrays, so a cache from elsewhere cannot run code.
Besides UAD-IMAG's use (evaluation caches of 2D methods), ``medood-train diffusion`` draws
its training slices from one: its scans go through the model space first and are written as
arrays (:func:`write_slice_lmdb` takes paths or 3D arrays). A cache is built in a ``.part``
folder and renamed when complete, so a cache that exists is whole.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from napari_medood.errors import MedoodError

DB_NAME = b"slices"
MAP_SIZE_PER_VOLUME = 70 * 1024 * 1024  # UAD-IMAG's reservation per volume
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _lmdb():
    try:
        import lmdb
    except ImportError as exc:
        raise MedoodError(
            "the LMDB slice cache needs the lmdb package (a dependency): pip install lmdb"
        ) from exc
    return lmdb


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a numpy array")


def load_slice(blob: bytes) -> np.ndarray:
    """A slice from its pickled bytes, allowing nothing but numpy arrays."""
    value = _ArrayUnpickler(io.BytesIO(blob)).load()
    if not isinstance(value, np.ndarray) or value.ndim != 2:
        raise pickle.UnpicklingError("a slice must be a 2D numpy array")
    return value


def write_slice_lmdb(
    volumes: Iterable[str | os.PathLike | np.ndarray], out_dir: str | os.PathLike
) -> int:
    """Write the non-empty slices along the third array axis of each volume (a file, or a 3D
    array already in model space), min-max normalised; returns how many."""
    import shutil

    from napari_medood.io.readers import read_volume

    lmdb = _lmdb()
    items = [v if isinstance(v, np.ndarray) else Path(v) for v in volumes]
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise MedoodError(f"{out_dir}: exists already; a slice cache is written only once")
    partial = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = lmdb.open(str(partial), map_size=MAP_SIZE_PER_VOLUME * max(len(items), 1), max_dbs=1)
    try:
        database = env.open_db(DB_NAME)
        index = 0
        for item in items:
            data = item if isinstance(item, np.ndarray) else read_volume(item).data
            if data.ndim != 3:
                raise MedoodError(f"{item if isinstance(item, Path) else 'an array'}: not 3D")
            data = np.asarray(data, dtype=np.float64)
            low, high = float(data.min()), float(data.max())
            data = (data - low) / (high - low) if high > low else np.zeros_like(data)
            planes = [np.ascontiguousarray(data[:, :, k]) for k in range(data.shape[2])]
            planes = [plane for plane in planes if plane.any()]
            while True:  # one transaction per volume; a full map grows and the volume retries
                try:
                    with env.begin(write=True, db=database) as txn:
                        for offset, plane in enumerate(planes):
                            key = f"{index + offset:08d}".encode("ascii")
                            txn.put(key, pickle.dumps(plane))
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)
            index += len(planes)
    finally:
        env.close()
    os.replace(partial, out_dir)
    return index


class SliceLMDB:
    """Read-only access to a slice cache: ``len(cache)``, ``cache[i]`` -> float32 (1, H, W).

    The database is opened in the process that reads it (LMDB handles must not cross a
    fork), so one object can go to ``DataLoader`` workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise MedoodError(f"{self.path}: no such LMDB slice cache")
        self._env = None
        self._pid = None
        env, database = self._open()
        with env.begin(db=database) as txn:
            self._length = txn.stat(database)["entries"]
        self.close()  # reopened on first read, in the process that reads (a forked worker)

    def _open(self):
        if self._env is None or self._pid != os.getpid():
            lmdb = _lmdb()
            try:
                self._env = lmdb.open(str(self.path), readonly=True, lock=False, max_dbs=1)
                self._db = self._env.open_db(DB_NAME, create=False)
            except lmdb.Error as exc:
                raise MedoodError(f"{self.path}: not a slice cache ({exc})") from exc
            self._pid = os.getpid()
        return self._env, self._db

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = state["_pid"] = None
        state.pop("_db", None)
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._length:
            raise IndexError(f"slice {index} out of range (0..{self._length - 1})")
        env, database = self._open()
        with env.begin(db=database) as txn:
            blob = txn.get(f"{index:08d}".encode("ascii"))
        if blob is None:
            raise KeyError(f"slice {index:08d} missing from {self.path}")
        return load_slice(blob).astype(np.float32)[None]

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> SliceLMDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
