"""MedOODFlow's RealNVP on feature vectors, built with normflows (the reference's library).

The flow is normflows' ``MaskedAffineFlow`` blocks with alternating even/odd masks over the
feature index, each followed by a data-initialised ``ActNorm``; the s- and t-networks are
1-hidden-layer MLPs with a zero-initialised last layer, and the log-scale is soft-clamped
by ``c * 2/pi * atan(s / c)`` (the reference's ATAN clamp, c = 3). The base distribution is
normflows' ``DiagGaussian``. Inputs are L2-normalised first (no log-det term), which makes
the score independent of the features' overall scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


class AtanClamp(nn.Module):
    """``c * 2/pi * atan(net(x) / c)``: a log-scale that can never exceed +-c."""

    def __init__(self, net: nn.Module, clamp: float):
        super().__init__()
        self.net = net
        self.clamp = float(clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clamp * (2.0 / math.pi) * torch.atan(self.net(x) / self.clamp)


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def build_realnvp(dim: int, blocks: int = 4, hidden: int | None = None, clamp: float = 3.0):
    """The reference's RealNVP for ``dim``-d vectors (``hidden`` = ``dim`` unless given)."""
    import normflows as nf

    hidden = int(hidden or dim)
    flows = []
    for i in range(int(blocks)):
        mask = (torch.arange(dim) % 2 == i % 2).float()
        t = nf.nets.MLP([dim, hidden, dim], init_zeros=True)
        s = AtanClamp(nf.nets.MLP([dim, hidden, dim], init_zeros=True), clamp)
        flows += [nf.flows.MaskedAffineFlow(mask, t, s), nf.flows.ActNorm((dim,))]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), flows)


@dataclass
class FlowRecipe:
    """The reference's training recipe (MedOODFlow ``train_nflow.yml``)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    history: list[dict] = field(default_factory=list)
    #: stop after the first epoch that ends this many seconds after the fit began (None:
    #: all the epochs); the best epoch so far is kept
    seconds: float | None = None
    #: what ``seconds`` are measured with (a training run's budget clock)
    clock: Callable[[], float] = time.perf_counter


def log_likelihood(flow, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """log p of the L2-normalised ``features`` (n, d) under ``flow``; non-finite values
    become the lowest finite float (they are as unlike the training data as can be)."""
    flow.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            z = l2_normalise(features[start : start + batch_size].float())
            out.append(flow.log_prob(z))
    values = torch.cat(out) if out else torch.zeros(0)
    return torch.nan_to_num(values, nan=-3.0e38, neginf=-3.0e38, posinf=3.0e38)


def fit_flow(
    flow,
    train: torch.Tensor,
    recipe: FlowRecipe,
    val_id: torch.Tensor | None = None,
    val_ood: torch.Tensor | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
):
    """Train ``flow`` by negative log-likelihood of ``train`` (n, d); keep the epoch with the
    best validation AUROC (ID vs OOD) when both validation sets are given, else the last.
    Returns the flow with the kept weights; ``recipe.history`` gets one row per epoch."""
    from napari_medood._progress import Cancelled
    from napari_medood.ood.metrics import auroc

    generator = torch.Generator().manual_seed(recipe.seed)
    data = l2_normalise(train.float())
    flow.train()
    with torch.no_grad():  # ActNorm's data-dependent initialisation on a large first batch
        flow.log_prob(data[torch.randperm(len(data), generator=generator)[:4096]])
    optimiser = torch.optim.Adam(
        flow.parameters(), lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay
    )
    select = val_id is not None and val_ood is not None and len(val_id) and len(val_ood)
    best, best_state = -math.inf, None
    batch = max(1, min(recipe.batch_size, len(data)))
    stop_at = None if recipe.seconds is None else recipe.clock() + recipe.seconds
    for epoch in range(recipe.epochs):
        if epoch and stop_at is not None and recipe.clock() >= stop_at:
            break
        flow.train()
        order = torch.randperm(len(data), generator=generator)
        losses = []
        for start in range(0, len(data), batch):
            if cancelled is not None and cancelled():
                raise Cancelled()
            loss = -flow.log_prob(data[order[start : start + batch]]).mean()
            if not torch.isfinite(loss):
                continue  # one unstable batch must not poison the weights
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(flow.parameters(), recipe.grad_clip)
            optimiser.step()
            losses.append(loss.item())
        row = {"epoch": epoch + 1, "nll": sum(losses) / max(len(losses), 1)}
        if select:
            # OOD = positive, scored by -log p (OpenOOD's convention)
            scores = torch.cat([-log_likelihood(flow, val_id), -log_likelihood(flow, val_ood)])
            labels = torch.cat([torch.zeros(len(val_id)), torch.ones(len(val_ood))])
            row["val_auroc"] = auroc(scores.numpy(), labels.numpy())
            if row["val_auroc"] >= best:  # ties go to the later, better-fitted epoch
                best = row["val_auroc"]
                best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
        recipe.history.append(row)
        if progress is not None:
            extra = f", validation AUROC {row['val_auroc']:.3f}" if select else ""
            progress(
                epoch + 1, recipe.epochs, f"flow epoch {epoch + 1}: NLL {row['nll']:.2f}{extra}"
            )
    if best_state is not None:
        flow.load_state_dict(best_state)
    return flow.eval()
