"""The feature-OOD core: flow, baselines, percentiles, metrics, corruptions (MedOODFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_medood.models.features import FeatureBatch
from napari_medood.ood.corruptions import SHIFTS, corrupt
from napari_medood.ood.flow import FlowRecipe
from napari_medood.ood.heads import HEADS, make_head
from napari_medood.ood.metrics import auroc, average_precision, fpr_at_id_recall, openood_metrics
from napari_medood.ood.reference import ReferenceScores


def batch(x, logits=None) -> FeatureBatch:
    x = torch.as_tensor(x, dtype=torch.float64)
    return FeatureBatch(
        x, x, None if logits is None else torch.as_tensor(logits, dtype=torch.float64)
    )


def two_clusters(n: int, seed: int):
    """In distribution: a Gaussian cluster; shifted: the same cluster pointed elsewhere (the
    flow reads unit vectors, so a shift must change the direction, not only the length)."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    centre = torch.zeros(d)
    centre[: d // 2] = 1.0
    shifted = torch.zeros(d)
    shifted[d // 4 : 3 * d // 4] = 1.0
    noise = lambda: 0.25 * torch.randn(n, d, generator=g)  # noqa: E731
    return centre + noise(), centre + noise(), shifted + noise()


@pytest.fixture(scope="module")
def fitted_flow():
    train, _, _ = two_clusters(512, 0)
    head = make_head("flow", 16)
    head.fit(batch(train), recipe=FlowRecipe(epochs=40, batch_size=64))
    return head


def test_the_flow_gives_finite_log_likelihoods(fitted_flow):
    _, held_out, shifted = two_clusters(64, 1)
    far = 1e3 * torch.randn(8, 16)
    for x in (held_out, shifted, far):
        values = fitted_flow.confidence(batch(x))
        assert values.shape == (len(x),)
        assert torch.isfinite(values).all()


def test_the_flow_separates_a_shifted_cluster(fitted_flow):
    _, held_out, shifted = two_clusters(200, 2)
    confidence = torch.cat(
        [fitted_flow.confidence(batch(held_out)), fitted_flow.confidence(batch(shifted))]
    )
    labels = np.r_[np.zeros(200), np.ones(200)]
    assert auroc(-confidence.numpy(), labels) > 0.95


def test_l2_normalisation_makes_the_flow_blind_to_feature_scale(fitted_flow):
    _, held_out, _ = two_clusters(32, 3)
    plain = fitted_flow.confidence(batch(held_out))
    for factor in (0.01, 3.7, 250.0):
        torch.testing.assert_close(
            fitted_flow.confidence(batch(factor * held_out)), plain, rtol=1e-4, atol=1e-3
        )


def test_the_flow_is_the_reference_realnvp():
    import normflows as nf

    head = make_head("flow", 10)
    layers = list(head.flow.flows)
    assert len(layers) == 8  # 4 coupling blocks, each followed by ActNorm
    couplings = [f for f in layers if isinstance(f, nf.flows.MaskedAffineFlow)]
    assert [type(f).__name__ for f in layers[1::2]] == ["ActNorm"] * 4
    masks = [c.b.flatten().tolist() for c in couplings]
    assert masks[0] == [1.0, 0.0] * 5  # even features pass, odd ones are transformed
    assert masks[1] == [0.0, 1.0] * 5 and masks[2] == masks[0] and masks[3] == masks[1]
    # zero-initialised last layers: the untrained flow is the identity (up to ActNorm)
    x = torch.randn(4, 10)
    for coupling in couplings:
        out, log_det = coupling(x)
        torch.testing.assert_close(out, x)
        assert torch.all(log_det == 0)
    # the log-scale is clamped to +-3 whatever the network says
    s = couplings[0].s
    s.net.net[-1].bias.data.fill_(1e6)
    with torch.no_grad():
        assert float(s(x).max()) <= 3.0 + 1e-5


def test_msp_and_energy_match_hand_computed_values():
    logits = [[2.0, 0.0], [0.0, 0.0]]
    b = batch([[0.0], [0.0]], logits)
    msp = make_head("msp", 1).confidence(b)
    assert msp.tolist() == pytest.approx([math.e**2 / (math.e**2 + 1), 0.5])
    energy = make_head("energy", 1).confidence(b)
    assert energy.tolist() == pytest.approx([math.log(math.e**2 + 1), math.log(2)])


def test_react_clips_at_the_90th_percentile_then_takes_the_energy():
    train = batch(np.arange(10.0).reshape(5, 2), np.zeros((5, 2)))  # activations 0..9
    eye = (torch.eye(2), torch.zeros(2))
    head = make_head("react", 2).fit(train, linear=eye)
    assert float(head.threshold) == pytest.approx(8.1)  # 90th percentile of 0..9
    confidence = head.confidence(batch([[1.0, 9.0]], [[0.0, 0.0]]))
    assert float(confidence[0]) == pytest.approx(math.log(math.exp(1.0) + math.exp(8.1)))


def test_mds_is_the_distance_to_the_nearest_class_mean():
    x = [[-1.0, 0.0], [1.0, 0.0], [4.0, -1.0], [4.0, 1.0]]
    head = make_head("mds", 2).fit(batch(x), labels=torch.tensor([0, 0, 1, 1]))
    # class means (0, 0) and (4, 0); shared covariance diag(0.5, 0.5)
    confidence = head.confidence(batch([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    assert confidence.tolist() == pytest.approx([0.0, -8.0, -18.0])


def test_vim_subtracts_the_scaled_residual_from_the_energy():
    x = [[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]
    eye = (torch.eye(2), torch.zeros(2))
    head = make_head("vim", 2, dim=1).fit(batch(x, x), linear=eye)
    # principal axis x1 (variance 4.5); residual |x2|, mean 0.5; mean max logit 1: alpha 2
    assert float(head.alpha) == pytest.approx(2.0)
    confidence = head.confidence(batch([[1.0, 2.0]], [[1.0, 2.0]]))
    assert float(confidence[0]) == pytest.approx(math.log(math.e + math.e**2) - 2.0 * 2.0)


def test_knn_is_the_distance_to_the_kth_unit_neighbour():
    head = make_head("knn", 2, k=1).fit(batch([[1.0, 0.0], [0.0, 5.0]]))
    diagonal = head.confidence(batch([[1.0, 1.0]]))
    assert float(diagonal[0]) == pytest.approx(-math.sqrt(2 - math.sqrt(2)))
    head.k = 2
    assert float(head.confidence(batch([[2.0, 0.0]]))[0]) == pytest.approx(-math.sqrt(2))


def test_every_head_saves_and_restores_its_state_without_pickle():
    from safetensors.torch import load, save

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    logits = x[:, :3].clone()
    linear = (torch.eye(3, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    query = batch(torch.randn(5, 8, generator=g), torch.randn(5, 3, generator=g))
    for name, cls in HEADS.items():
        head = make_head(name, 8)
        kwargs = {"recipe": FlowRecipe(epochs=2)} if name == "flow" else {}
        head.fit(batch(x, logits), torch.randint(0, 3, (64,), generator=g), linear, **kwargs)
        tensors = load(save({k: v.float().contiguous() for k, v in head.tensors().items()}))
        restored = cls.restore(head.settings(), tensors)
        torch.testing.assert_close(
            restored.confidence(query),
            head.confidence(query),
            rtol=1e-4,
            atol=1e-4,
            check_dtype=False,
        )


def test_heads_that_need_a_classifier_say_so():
    head = make_head("energy", 4)
    with pytest.raises(ValueError, match="needs class logits"):
        head.confidence(batch(np.zeros((2, 4))))
    with pytest.raises(Exception, match="valid"):
        make_head("odin", 4)


def test_percentiles_rise_with_confidence_and_stay_inside_0_100():
    reference = ReferenceScores.of(np.arange(100.0))
    values = np.array([-1e9, -50.0, 0.0, 49.5, 99.0, 150.0, 1e9])
    p = reference.percentile(values)
    assert np.all(np.diff(p) > 0) or np.all(np.diff(p[1:-1]) > 0)
    assert np.all((p >= 0) & (p <= 100))
    assert reference.percentile(49.5) == pytest.approx(50.0)
    assert reference.ood_score(1e9) == pytest.approx(0.0, abs=1e-9)
    assert reference.ood_score(-1e9) == pytest.approx(1.0, abs=1e-9)
    # strictly monotone beyond the reference too: far-out scans stay ordered
    assert reference.percentile(-60.0) < reference.percentile(-50.0) < reference.percentile(-1.0)


def test_ood_metrics_match_scikit_learn_and_a_hand_count():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 300), rng.normal(1.5, 1, 200)].round(1)  # with ties
    labels = np.r_[np.zeros(300), np.ones(200)]
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores)
    )
    # 20 ID scores 1..20: 95 % of them are <= 19; OOD at 5, 19.5, 25, 30: one of four accepted
    assert (
        fpr_at_id_recall(
            np.r_[np.arange(1, 21), [5, 19.5, 25, 30]], np.r_[np.zeros(20), np.ones(4)]
        )
        == 0.25
    )
    metrics = openood_metrics(scores, labels)
    assert metrics["aupr_in"] == pytest.approx(average_precision_score(1 - labels, -scores))


def _head_phantom(shape=(48, 48, 48)) -> np.ndarray:
    """A bright ellipsoid with a darker core on a zero background, in [0, 1]."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.7, 0.6, 0.5])[:, None, None, None]) ** 2).sum(0))
    return np.where(r < 1, 0.8 - 0.4 * (r < 0.5), 0.0).astype(np.float32)


@pytest.mark.parametrize("kind", SHIFTS)
def test_corruptions_keep_the_shape_change_the_scan_and_repeat_by_seed(kind):
    x = _head_phantom()
    out = corrupt(x, kind, (1.0, 1.0, 1.0), seed=3)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.abs(out - x).max() > 1e-3
    np.testing.assert_array_equal(out, corrupt(x, kind, (1.0, 1.0, 1.0), seed=3))


def test_corruptions_obey_their_parameters():
    x = _head_phantom()
    inside = x > 0
    # truncation: exactly half of one axis zeroed, the rest untouched
    t = corrupt(x, "truncation", seed=1)
    zeroed = [
        a
        for a in range(3)
        if np.all(np.take(t, range(24), a) == 0) or np.all(np.take(t, range(24, 48), a) == 0)
    ]
    assert len(zeroed) >= 1
    changed = t != x
    assert np.array_equal(t[changed], np.zeros(changed.sum()))
    # gamma: x ** exp(+-1.5) on [0, 1] intensities
    g = corrupt(x, "gamma", seed=2)
    expected = [x ** math.exp(1.5), x ** math.exp(-1.5)]
    assert any(np.allclose(g, e, atol=1e-4) for e in expected)
    # scaling: the object's volume grows or shrinks about 8-fold
    s = corrupt(x, "scaling", seed=4)
    ratio = (s > 0.2).sum() / inside.sum()
    assert ratio > 3 or ratio < 1 / 3
    # noise: z-normalised, then Gaussian noise of standard deviation 0.5
    n = corrupt(x, "noise", seed=5)
    z = (x - x.mean()) / x.std()
    assert np.std(n - z) == pytest.approx(0.5, rel=0.05)
    # downsampling: the same grid, less detail (lower gradient energy)
    d = corrupt(x, "downsampling", seed=6)
    assert np.abs(np.diff(d, axis=0)).sum() < np.abs(np.diff(x, axis=0)).sum() * 1.01
    # registration: the object moves (its centre of mass shifts or the shape is sheared)
    r = corrupt(x, "registration", seed=7)
    assert np.abs(r - x).sum() > 0.05 * x.sum()


def test_an_unknown_corruption_lists_the_valid_ones():
    from napari_medood.errors import MedoodError

    with pytest.raises(MedoodError, match="truncation"):
        corrupt(_head_phantom(), "blur")


def test_model_space_windows_cover_the_brain_and_skip_the_background():
    from napari_medood.preprocessing.feature_input import model_space_inputs

    image = np.zeros((70, 90, 60), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[10:60, 10:80, 8:52] = True
    image[mask] = 0.5
    whole = model_space_inputs(image, mask, {"margin": 4, "divisor": 16})
    assert len(whole) == 1 and all(s % 16 == 0 for s in whole[0].shape)
    assert whole[0].sum() == pytest.approx(image.sum())  # the crop keeps every brain voxel
    windows = model_space_inputs(image, mask, {"margin": 4, "divisor": 16, "window": [32, 32, 32]})
    assert len(windows) > 1 and all(w.shape == (32, 32, 32) for w in windows)
    assert all((w != 0).mean() >= 0.5 for w in windows)
    # a brain smaller than a window still gives one, padded
    small = np.zeros((20, 20, 20), np.float32)
    small[5:15, 5:15, 5:15] = 1.0
    (one,) = model_space_inputs(
        small, small > 0, {"margin": 0, "divisor": 16, "window": [48, 48, 48]}
    )
    assert one.shape == (48, 48, 48) and one.sum() == small.sum()
