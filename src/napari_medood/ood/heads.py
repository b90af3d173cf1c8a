"""Post-hoc OOD heads on a frozen network's features: MedOODFlow's flow and the classic
baselines, behind one interface (OpenOOD's: ``fit`` on in-distribution features, then
``confidence``, higher = more in-distribution).

Each head reads a :class:`~napari_medood.models.features.FeatureBatch` and saves its state as
plain tensors (``tensors``) plus JSON settings (``settings``), so a checkpoint holds it in
safetensors, never a pickle. Written here on torch rather than taken from pytorch-ood, whose
install pulls a torchvision that must match the torch build exactly and whose detectors keep
their state in Python attributes; each formula is short and tested against a hand-computed
value.

=========  ==========================================================  ==================
head       confidence                                                   reads
=========  ==========================================================  ==================
flow       log p(features / |features|) under a RealNVP                 pooled stages
msp        max softmax probability                                      logits
energy     T log sum exp(logits / T)                                    logits
react      energy of the logits recomputed from activations clipped    penultimate, fc
           at their ID 90th percentile
mds        -min over classes of the Mahalanobis distance (shared        penultimate
           covariance) to the class means
vim        energy - alpha * |residual of (x - u) outside the principal  penultimate, fc
           subspace|, u = -pinv(W) b
knn        -distance to the k-th nearest ID neighbour (unit vectors)    penultimate
=========  ==========================================================  ==================
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from napari_medood.models.features import FeatureBatch
from napari_medood.ood.flow import FlowRecipe, build_realnvp, fit_flow, l2_normalise, log_likelihood


class OODHead:
    """Base class: set ``name``, ``needs_logits``, write ``fit``/``confidence`` and the
    state accessors."""

    name: ClassVar[str] = "head"
    description: ClassVar[str] = ""
    needs_logits: ClassVar[bool] = False

    def fit(self, batch: FeatureBatch, labels: torch.Tensor | None = None, linear=None, **kw):
        return self

    def confidence(self, batch: FeatureBatch) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def restore(cls, settings: dict[str, Any], tensors: dict[str, torch.Tensor]) -> OODHead:
        head = cls(**settings)
        for key, value in tensors.items():  # stored as float32; the formulas run in float64
            setattr(head, key, value.double())
        return head


def _logits(batch: FeatureBatch, name: str) -> torch.Tensor:
    if batch.logits is None:
        raise ValueError(f"the {name} head needs class logits; this backbone has no classifier")
    return batch.logits.double()


def _energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return temperature * torch.logsumexp(logits / temperature, dim=1)


class MSPHead(OODHead):
    name = "msp"
    description = "maximum softmax probability (Hendrycks & Gimpel)"
    needs_logits = True

    def confidence(self, batch):
        return torch.softmax(_logits(batch, self.name), dim=1).max(dim=1).values


class EnergyHead(OODHead):
    name = "energy"
    description = "energy score, T log-sum-exp of the logits (Liu et al.)"
    needs_logits = True

    def __init__(self, temperature: float = 1.0):
        self.temperature = float(temperature)

    def settings(self):
        return {"temperature": self.temperature}

    def confidence(self, batch):
        return _energy(_logits(batch, self.name), self.temperature)


def _linear(linear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if linear is None:
        raise ValueError(f"the {name} head needs the classifier's last layer")
    weight, bias = linear
    return weight.detach().double().cpu(), bias.detach().double().cpu()


class ReActHead(OODHead):
    name = "react"
    description = "energy after clipping activations at their ID percentile (Sun et al.)"
    needs_logits = True

    def __init__(self, percentile: float = 90.0):
        self.percentile = float(percentile)
        self.threshold = torch.tensor(0.0)

    def settings(self):
        return {"percentile": self.percentile}

    def tensors(self):
        return {"threshold": self.threshold, "weight": self.weight, "bias": self.bias}

    def fit(self, batch, labels=None, linear=None, **kw):
        self.weight, self.bias = _linear(linear, self.name)
        values = batch.penultimate.double().flatten()
        self.threshold = torch.quantile(values, self.percentile / 100.0).reshape(())
        return self

    def confidence(self, batch):
        clipped = batch.penultimate.double().clamp(max=float(self.threshold))
        return _energy(clipped @ self.weight.T + self.bias)


class MDSHead(OODHead):
    name = "mds"
    description = "Mahalanobis distance to the nearest class mean, shared covariance (Lee et al.)"

    def tensors(self):
        return {"means": self.means, "precision": self.precision}

    def fit(self, batch, labels=None, linear=None, **kw):
        x = batch.penultimate.double()
        labels = torch.zeros(len(x), dtype=torch.long) if labels is None else labels.long()
        classes = torch.unique(labels)
        self.means = torch.stack([x[labels == c].mean(0) for c in classes])
        centred = x - self.means[torch.searchsorted(classes, labels)]
        covariance = centred.T @ centred / len(x)
        self.precision = torch.linalg.pinv(covariance, hermitian=True)
        return self

    def confidence(self, batch):
        x = batch.penultimate.double()
        diff = x[:, None, :] - self.means[None]
        distances = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return -distances.min(dim=1).values


class ViMHead(OODHead):
    name = "vim"
    description = "virtual logit from the residual outside the principal subspace (Wang et al.)"
    needs_logits = True

    def __init__(self, dim: int | None = None):
        self.dim = dim

    def settings(self):
        return {"dim": self.dim}

    def tensors(self):
        return {
            "origin": self.origin,
            "residual_space": self.residual_space,
            "alpha": self.alpha,
            "weight": self.weight,
            "bias": self.bias,
        }

    def fit(self, batch, labels=None, linear=None, **kw):
        self.weight, self.bias = _linear(linear, self.name)
        x = batch.penultimate.double()
        width = x.shape[1]
        # the reference keeps 1000 (of 2048) or 512 (of 768) principal directions: about half
        self.dim = int(self.dim or max(1, width // 2))
        if not 0 < self.dim < width:
            raise ValueError(f"ViM's principal dimension must be within 1..{width - 1}")
        self.origin = -torch.linalg.pinv(self.weight) @ self.bias
        centred = x - self.origin
        covariance = centred.T @ centred / len(x)
        _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
        self.residual_space = vectors[:, : width - self.dim].contiguous()
        virtual = torch.linalg.norm(centred @ self.residual_space, dim=1)
        max_logit = (x @ self.weight.T + self.bias).max(dim=1).values
        self.alpha = (max_logit.mean() / virtual.mean()).reshape(())
        return self

    def confidence(self, batch):
        x = batch.penultimate.double()
        virtual = torch.linalg.norm((x - self.origin) @ self.residual_space, dim=1)
        return _energy(x @ self.weight.T + self.bias) - self.alpha * virtual


class KNNHead(OODHead):
    name = "knn"
    description = "distance to the k-th nearest training vector, unit-normalised (Sun et al.)"

    def __init__(self, k: int = 50):
        self.k = int(k)

    def settings(self):
        return {"k": self.k}

    def tensors(self):
        return {"bank": self.bank}

    def fit(self, batch, labels=None, linear=None, **kw):
        self.bank = l2_normalise(batch.penultimate.double())
        self.k = max(1, min(self.k, len(self.bank)))
        return self

    def confidence(self, batch):
        x = l2_normalise(batch.penultimate.double())
        distances = torch.cdist(x, self.bank)
        return -distances.kthvalue(self.k, dim=1).values


class FlowHead(OODHead):
    name = "flow"
    description = "log-likelihood of a RealNVP normalizing flow (MedOODFlow)"

    def __init__(self, dim: int, blocks: int = 4, hidden: int | None = None, clamp: float = 3.0):
        self.dim, self.blocks, self.hidden, self.clamp = int(dim), int(blocks), hidden, clamp
        self.flow = build_realnvp(self.dim, self.blocks, self.hidden, self.clamp)

    def settings(self):
        return {"dim": self.dim, "blocks": self.blocks, "hidden": self.hidden, "clamp": self.clamp}

    def tensors(self):
        return {k: v.detach() for k, v in self.flow.state_dict().items()}

    @classmethod
    def restore(cls, settings, tensors):
        head = cls(**settings)
        head.flow.load_state_dict(tensors, strict=True)
        head.flow.eval()
        return head

    def fit(
        self,
        batch,
        labels=None,
        linear=None,
        recipe: FlowRecipe | None = None,
        val_id: FeatureBatch | None = None,
        val_ood: FeatureBatch | None = None,
        progress=None,
        cancelled=None,
        **kw,
    ):
        torch.manual_seed((recipe or FlowRecipe()).seed)
        self.flow = build_realnvp(self.dim, self.blocks, self.hidden, self.clamp)
        self.recipe = recipe or FlowRecipe()
        fit_flow(
            self.flow,
            batch.features,
            self.recipe,
            None if val_id is None else val_id.features,
            None if val_ood is None else val_ood.features,
            progress,
            cancelled,
        )
        return self

    def confidence(self, batch):
        return log_likelihood(self.flow, batch.features).double()


HEADS: dict[str, type[OODHead]] = {
    h.name: h for h in (FlowHead, MSPHead, EnergyHead, ReActHead, MDSHead, ViMHead, KNNHead)
}


def make_head(name: str, width: int, **settings) -> OODHead:
    """A new head called ``name`` for ``width``-d pooled features; unknown names list the
    known ones."""
    from napari_medood.errors import MedoodError, look_up_option

    try:
        look_up_option(name, HEADS, "OOD head")
    except ValueError as exc:
        raise MedoodError(str(exc)) from None
    if name == "flow":
        return FlowHead(width, **settings)
    return HEADS[name](**settings)


def usable_heads(has_logits: bool) -> list[str]:
    """The heads a backbone can feed (the logit-based ones need a classifier)."""
    return [name for name, head in HEADS.items() if has_logits or not head.needs_logits]
