"""Where torch work runs: one place that the CLI, the napari panels, detectors and training ask.

Device names are ``auto`` (CUDA, else Apple's MPS, else the CPU), ``cpu``, ``cuda``,
``cuda:N`` and ``mps``. :func:`check_device_name` validates a name's spelling without
importing torch (for argument parsing); :func:`choose_device` checks that the device is
there and returns the concrete name.
"""

from __future__ import annotations

import re

from napari_medood.errors import MedoodError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceFallbackWarning(UserWarning):
    """The GPU ran out of memory and the work went on on the CPU."""


def check_device_name(name: str) -> str:
    """``name`` if it is spelled like a device; else an error listing the valid names."""
    text = str(name).strip().lower()
    if not _DEVICE.match(text):
        raise MedoodError(
            f"unknown device {name!r}; valid choices: {', '.join(DEVICE_CHOICES)} "
            "(N: the GPU's index, as nvidia-smi lists it)"
        )
    return text


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def choose_device(name: str = "auto") -> str:
    """The concrete device for ``name``: ``auto`` -> ``cuda``, else ``mps``, else ``cpu``;
    an explicit device must be available."""
    import torch

    name = check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedoodError(
                f"device {name!r} was asked for but torch sees no CUDA GPU (is a CUDA build "
                "of torch installed?); use --device auto or cpu"
            )
        if ":" in name:
            index = int(name.split(":")[1])
            count = torch.cuda.device_count()
            if index >= count:
                raise MedoodError(
                    f"device {name!r} was asked for but torch sees {count} CUDA GPU(s) "
                    f"(cuda:0..cuda:{count - 1})"
                )
        return name
    if name == "mps" and not _mps_available():
        raise MedoodError("device 'mps' was asked for but is not available; use auto or cpu")
    return name


def available_devices() -> list[tuple[str, str]]:
    """``(label, name)`` of every device a user can pick here, ``auto`` first."""
    import importlib.util

    devices = [("auto", "auto"), ("cpu", "cpu")]
    if importlib.util.find_spec("torch") is None:
        return devices
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        for index in range(count):
            label = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
            devices.append((label, f"cuda:{index}" if count > 1 else "cuda"))
    if _mps_available():
        devices.append(("mps", "mps"))
    return devices


def is_gpu(device: str) -> bool:
    return not str(device).startswith("cpu")
