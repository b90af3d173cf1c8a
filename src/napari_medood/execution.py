"""How a network runs on a device: precision, memory format and threads, chosen in one place.

Every family that runs a network (the U-Net now; diffusion reconstructions and feature
extractors next) asks :func:`plan_execution` for an :class:`Execution` and runs its forward
passes through it:

- **precision** (``auto``, ``float32``, ``bfloat16``, ``float16``): the dtype of autocast.
  ``auto`` takes bfloat16 on a CPU whose instructions compute it (AVX-512 BF16 or AMX),
  float32 on other CPUs, float16 on CUDA (bfloat16 where the GPU has it and float16 was
  not asked for) and float32 on MPS. Outputs always come back as float32.
- **memory format**: ``channels_last_3d`` (NDHWC) for 3D convolutions on the CPU, where
  oneDNN's kernels are fastest with it;
- **threads**: one per core available to the process (torch's default can count logical
  CPUs the process may not use), unless the user set ``OMP_NUM_THREADS`` or torch's count;
- **folded batch norm**: for inference, each BatchNorm that follows a convolution is folded
  into the convolution's weights (eval mode makes it an affine map), which removes a pass
  over every feature map and, under bfloat16 autocast, the casts around it.

The measured table behind these choices is in docs/benchmarks.md (issue 9).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from napari_medood.errors import MedoodError, look_up_option

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


#: ``0`` or ``1``: what ``precision=auto`` takes this CPU to compute, whatever it does (float32
#: or bfloat16); for proving results on the other kind of CPU, and for a CPU whose bfloat16
#: kernels misbehave
BFLOAT16_OVERRIDE = "MEDOOD_CPU_BFLOAT16"


def cpu_has_bfloat16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), or when
    ``MEDOOD_CPU_BFLOAT16=1`` says to take it so (``0``: never)."""
    import torch

    forced = os.environ.get(BFLOAT16_OVERRIDE, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise MedoodError(f"{BFLOAT16_OVERRIDE} must be 0 or 1, not {forced!r}")

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        try:
            if probe():
                return True
        except RuntimeError:
            pass
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if amx is not None:
        with contextlib.suppress(RuntimeError):
            return bool(amx())
    return False


def resolve_precision(requested: str, device: str) -> str:
    """The precision ``requested`` means on ``device`` (``auto`` resolved; an impossible
    request refused with the reason)."""
    import torch

    look_up_option(requested, PRECISIONS, "precision")
    kind = str(device).split(":")[0]
    if requested == "auto":
        if kind == "cpu":
            return "bfloat16" if cpu_has_bfloat16() else "float32"
        if kind == "cuda":
            return "float16"
        return "float32"
    if requested == "float16" and kind == "cpu":
        raise MedoodError(
            "float16 is not computed by CPUs; use --precision bfloat16 (on CPUs with AVX-512 "
            "BF16 or AMX), float32, or auto"
        )
    if requested == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise MedoodError("this GPU does not compute bfloat16; use --precision float16 or auto")
    return requested


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), the count torch should use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def configure_threads() -> int:
    """Set torch's intra-op threads to the cores available, unless the user chose them."""
    import torch

    if "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    wanted = default_threads()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


@dataclass
class Execution:
    """How forward passes run: device, precision (resolved), memory format.

    Mutable for one reason: a training run whose bfloat16 steps give non-finite numbers
    goes on in float32 (:meth:`fall_back_to_float32`), and every part of the run that holds
    this plan (its step's loss, its validation) follows at once."""

    device: str
    precision: str
    channels_last: bool

    @property
    def dtype(self):
        import torch

        return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self.precision
        ]

    def prepare(self, model, fold_batch_norm: bool = True):
        """``model`` on the device, in eval mode, in the memory format of this plan (for
        inference: with its batch norms folded into the convolutions before them; the model
        is changed in place)."""
        import torch

        model = model.eval()
        if fold_batch_norm:
            fold_batch_norms(model)
        model = model.to(self.device)
        # channels-last 3D is what was measured for 3D networks; 2D networks keep their layout
        if self.channels_last and any(isinstance(m, torch.nn.Conv3d) for m in model.modules()):
            model = model.to(memory_format=torch.channels_last_3d)
        return model

    def inputs(self, batch):
        """A batch on the device, in the memory format of this plan."""
        import torch

        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last and batch.dim() == 5:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        return batch

    def autocast(self):
        """The autocast context of this plan (a no-op for float32)."""
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        kind = str(self.device).split(":")[0]
        return torch.autocast(kind, dtype=self.dtype)

    def fall_back_to_float32(self) -> None:
        """From now on, forward passes run in float32 (no autocast)."""
        self.precision = "float32"

    def describe(self, model=None) -> str:
        """``device, precision[, channels-last]``; the layout only where it applies (3D
        networks: pass ``model`` to check)."""
        import torch

        applies = self.channels_last and (
            model is None or any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        )
        layout = ", channels-last" if applies else ""
        return f"{self.device}, {self.precision}{layout}"


def fold_batch_norms(model) -> int:
    """Fold every BatchNorm that directly follows a convolution inside an ``nn.Sequential``
    into that convolution (eval mode only); returns how many were folded."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("batch norms are folded for inference only: call model.eval() first")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) and isinstance(
                norm, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
            ):
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
                folded += 1
    return folded


def plan_execution(device: str, precision: str = "auto") -> Execution:
    """The execution of networks on ``device`` (concrete, see ``device.choose_device``)."""
    kind = str(device).split(":")[0]
    resolved = resolve_precision(precision, device)
    if kind == "cpu":
        configure_threads()
    return Execution(device, resolved, channels_last=kind == "cpu")
