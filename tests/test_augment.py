"""Augmentation: parameters sampled apart from their application, deterministic, masks exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radiolens.models.augment import (
    AugmentConfig,
    Augmenter,
    AugmentParams,
    _affine_theta,
    _spatial,
    apply,
    sample_params,
)


def _blob(shape=(12, 40, 48), center=(6, 18, 30), radii=(3, 7, 5)) -> np.ndarray:
    z, y, x = np.indices(shape)
    d = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), center, radii))
    return (d <= 1.0).astype(np.uint8)


@pytest.fixture
def image():
    rng = np.random.default_rng(3)
    return rng.normal(size=(3, 12, 40, 48)).astype(np.float32)


def test_same_generator_state_gives_same_params_and_different_seeds_differ():
    a = [sample_params(np.random.default_rng(11)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(11)
    seq = [sample_params(rng) for _ in range(5)]
    assert seq[0] == a[0]
    assert len({p for p in seq}) == 5  # the generator advances


def test_apply_is_a_pure_function_of_params(image):
    params = sample_params(np.random.default_rng(5))
    before = image.copy()
    mask = _blob()
    # the global RNGs must not matter: all randomness is in params
    np.random.seed(0)
    torch.manual_seed(0)
    out1, m1 = apply(params, image, {"lesion": mask})
    np.random.seed(123)
    torch.manual_seed(123)
    out2, m2 = apply(params, image, {"lesion": mask})
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(m1["lesion"], m2["lesion"])
    np.testing.assert_array_equal(image, before)  # input untouched


def test_sample_params_rejects_a_non_generator():
    with pytest.raises(TypeError, match="Generator"):
        sample_params(np.random.RandomState(0))


def test_identity_params_leave_image_and_masks_unchanged(image):
    mask = _blob()
    out, m = apply(AugmentParams(), image, mask)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(m, mask)


def test_zero_probabilities_give_identity_params():
    cfg = AugmentConfig(p_flip=(0.0, 0.0, 0.0), p_affine=0.0, p_intensity=0.0)
    params = sample_params(np.random.default_rng(0), cfg)
    assert not params.has_affine and not params.has_intensity and params.flip == (False, False, False)


def test_flip_is_exact_and_shared_by_image_and_mask(image):
    mask = _blob()
    out, m = apply(AugmentParams(flip=(False, True, True)), image, mask)
    np.testing.assert_array_equal(out, image[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(m, mask[:, ::-1, ::-1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masks_stay_binary_and_aligned_under_affine(seed):
    mask = _blob()
    # the image carries the mask as intensity: after the same affine, thresholding the
    # (trilinear) image must give (nearly) the (nearest-neighbour) mask
    image = np.stack([mask.astype(np.float32)] * 2)
    cfg = AugmentConfig(max_rotation_deg=15, scale_range=(0.85, 1.15), p_affine=1.0, p_intensity=0.0)
    params = sample_params(np.random.default_rng(seed), cfg)
    assert params.has_affine
    out, m = apply(params, image, {"lesion": mask})
    m = m["lesion"]
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert m.sum() > 0
    moved = out[0] > 0.5
    iou = np.logical_and(moved, m > 0).sum() / np.logical_or(moved, m > 0).sum()
    assert iou > 0.85
    assert not np.array_equal(m, mask)  # it did move


def test_integer_label_masks_keep_their_label_set():
    zones = _blob().astype(np.uint8) + _blob(center=(6, 20, 20), radii=(3, 5, 5))
    params = AugmentParams(rotation_deg=8.0, scale=1.1, translation=(0.05, -0.04, 0.03))
    _, out = apply(params, np.zeros((1, *zones.shape), np.float32), zones)
    assert set(np.unique(out)) <= set(np.unique(zones))


def test_translation_and_rotation_geometry():
    img = np.zeros((1, 8, 20, 30), np.float32)
    img[0, 4, 10, 15] = 1.0
    out, _ = apply(AugmentParams(translation=(0.0, 0.1, 0.1)), img)
    # positive shifts move content to larger indices: 0.1 * 20 = 2 rows, 0.1 * 30 = 3 columns
    assert tuple(np.argwhere(out[0] > 0.5)[0]) == (4, 12, 18)
    mask = np.zeros((8, 20, 20), np.uint8)
    mask[4, 3:6, 9:11] = 1  # a bar above the centre
    _, rot = apply(AugmentParams(rotation_deg=90.0), np.zeros((1, 8, 20, 20), np.float32), mask)
    # a quarter turn in the axial plane keeps the slice and moves the bar to the side
    assert rot[[0, 1, 2, 3, 5, 6, 7]].sum() == 0
    ys, xs = np.nonzero(rot[4])
    assert xs.std() > ys.std()  # the bar along y now lies along x
    assert abs(ys.mean() - 9.5) < 1.5 and abs(xs.mean() - 9.5) > 4


def test_separable_resampling_matches_3d_grid_sample():
    x = torch.randn(2, 10, 24, 20)
    params = AugmentParams(rotation_deg=7.0, scale=1.07, translation=(0.05, 0.02, -0.03))
    theta = _affine_theta(params, (10, 24, 20))
    for mode, pad in [("bilinear", "border"), ("nearest", "zeros"), ("bilinear", "zeros")]:
        grid = F.affine_grid(theta, [1, 2, 10, 24, 20], align_corners=False)
        ref = F.grid_sample(x[None], grid, mode=mode, padding_mode=pad, align_corners=False)[0]
        torch.testing.assert_close(_spatial(x, theta, mode, pad), ref, atol=1e-4, rtol=1e-4)


def test_intensity_changes_image_only_and_noise_replays_from_its_seed(image):
    mask = _blob()
    params = AugmentParams(gamma=1.3, intensity_scale=1.1, intensity_shift=0.05, noise_std=0.1, noise_seed=9)
    out, m = apply(params, image, mask)
    np.testing.assert_array_equal(m, mask)
    assert not np.allclose(out, image)
    again, _ = apply(params, image, mask)
    np.testing.assert_array_equal(out, again)
    other, _ = apply(dataclasses.replace(params, noise_seed=10), image, mask)
    assert not np.array_equal(out, other)
    # without noise, gamma/scale/shift are monotone per channel: ranks are preserved
    clean, _ = apply(dataclasses.replace(params, noise_std=0.0), image)
    for c in range(3):
        assert np.array_equal(np.argsort(clean[c].ravel(), kind="stable")[-50:],
                              np.argsort(image[c].ravel(), kind="stable")[-50:])


def test_augmenter_is_seeded():
    img = np.random.default_rng(0).normal(size=(1, 6, 16, 16)).astype(np.float32)
    a = Augmenter(seed=4)
    b = Augmenter(seed=4)
    out_a, _, pa = a(img)
    out_b, _, pb = b(img)
    assert pa == pb
    np.testing.assert_array_equal(out_a, out_b)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        apply(AugmentParams(), np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="mask 'lesion'"):
        apply(AugmentParams(), np.zeros((1, 4, 4, 4), np.float32), {"lesion": np.zeros((4, 4, 5), np.uint8)})
