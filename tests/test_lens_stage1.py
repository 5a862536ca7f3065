"""Stage 1 does what the documentation says: the loss it minimises and the penalties it applies."""

from __future__ import annotations

import numpy as np
import pytest

from radiolens.lens._validation import torch_module
from radiolens.lens.projection import (
    Stage1Settings,
    activation,
    modality_mix,
    reconstruction_loss,
    train_projection,
)


def _data(n=24, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    # modalities of unequal size (2, 5 and 3 features), so the per-modality mean matters
    mod_index = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    R = rng.uniform(size=(n, len(mod_index)))
    return X, R, mod_index


def _settings(**kw):
    base = dict(hidden_dim=3, l1=0.0, l2=0.0, epochs=1, lr=0.1, random_state=5, activation="gelu",
                optimizer="sgd", batch_size=1000, device="cpu", n_threads=1, progress=False)
    return Stage1Settings(**{**base, **kw})


def test_reconstruction_loss_is_the_per_modality_mean_absolute_error_summed():
    rng = np.random.default_rng(1)
    mod_index = np.array([0, 0, 1, 1, 1, 2])
    pred, target = rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
    expected = sum(np.abs(pred - target)[:, mod_index == m].mean() for m in range(3))
    assert reconstruction_loss(pred, target, modality_mix(mod_index)) == pytest.approx(expected, rel=1e-6)
    # not the mean over all features (which would weight the larger modality more)
    assert expected != pytest.approx(np.abs(pred - target).mean() * 3, rel=1e-3)


def test_training_records_the_documented_loss_of_the_model_it_trains():
    """With lr = 0 nothing moves: the recorded loss is the loss of the returned projection and
    heads on the training data, by the documented formula (NumPy, independent of torch)."""
    X, R, mod_index = _data()
    result = train_projection(X, R, mod_index, _settings(lr=0.0))
    Z = activation(torch_module(), "gelu")(torch_module().from_numpy(X @ result.weight.T + result.bias)).numpy()
    pred = Z @ result.head_weight.T + result.head_bias
    expected = sum(np.abs(pred - R)[:, mod_index == m].mean() for m in range(3))
    assert result.history["train_loss"].iloc[0] == pytest.approx(expected, rel=1e-5)
    # the heads start at the per-feature median (the best constant under an L1 loss)
    np.testing.assert_allclose(result.head_bias, np.median(R, axis=0), rtol=1e-6)


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_penalties_act_on_the_weights_of_projection_and_heads_not_the_biases(penalty):
    """One plain gradient step (SGD, first step: the momentum buffer is the gradient): the
    penalty adds exactly ``lr * l1 * sign(w)`` (L1) or ``lr * 2 * l2 * w`` (L2) to the step of
    every weight, and nothing to the biases."""
    X, R, mod_index = _data()
    lr, strength = 0.1, 0.05
    start = train_projection(X, R, mod_index, _settings(lr=0.0))
    plain = train_projection(X, R, mod_index, _settings())
    penalised = train_projection(X, R, mod_index, _settings(**{penalty: strength}))
    for name, w0 in (("weight", start.weight), ("head_weight", start.head_weight)):
        extra = getattr(penalised, name) - getattr(plain, name)
        expected = -lr * strength * np.sign(w0) if penalty == "l1" else -lr * 2 * strength * w0
        np.testing.assert_allclose(extra, expected, atol=2e-6)
    for name in ("bias", "head_bias"):
        np.testing.assert_allclose(getattr(penalised, name), getattr(plain, name), atol=1e-7)
    # and the recorded loss is the reconstruction term only (identical before the step)
    assert penalised.history["train_loss"].iloc[0] == pytest.approx(plain.history["train_loss"].iloc[0], rel=1e-7)
