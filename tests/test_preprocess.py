"""Preprocessing: resampling to a target spacing and a gland-centred crop, cached."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from radiolens.data import Cohort, load_cohort
from radiolens.data import preprocess as preprocess_module
from radiolens.data.image_io import resample_to_reference
from radiolens.data.preprocess import crop_grid, preprocess, resample_to_spacing


@pytest.fixture(scope="module")
def small(synthetic_cohort) -> Cohort:
    # two lesion cases and one without, from the shared synthetic cohort
    groups = synthetic_cohort.manifest["pirads_group"]
    ids = [groups.index[groups == 0][0], *groups.index[groups >= 2][:2]]
    return synthetic_cohort.subset(ids)


def _centroid_mm(mask: np.ndarray, spacing) -> np.ndarray:
    return np.argwhere(mask > 0).mean(axis=0)[::-1] * np.asarray(spacing)


def test_resample_and_crop_centred_on_gland(small, tmp_path):
    out = preprocess(small, spacing=(1.0, 1.0, 1.0), crop_shape=(64, 64, 64), out_dir=tmp_path / "pre")
    assert out.case_ids == small.case_ids
    assert out.labels.equals(small.labels)  # labels describe the patient, not the grid
    for case_id in out.case_ids:
        before, after = small.load_case(case_id), out.load_case(case_id)
        assert after.shape == (64, 64, 64)
        assert after.spacing == pytest.approx((1.0, 1.0, 1.0))
        assert after.images["T2W"].dtype == np.float32 and after.masks["gland"].dtype == np.uint8
        assert set(np.unique(after.masks["zones"])) <= {0, 1, 2}
        # gland centre of mass at the box centre (within a voxel)
        centre = _centroid_mm(after.masks["gland"], after.spacing)
        assert centre == pytest.approx(np.full(3, 31.5), abs=1.0)
        # same physical gland: volume kept within partial-volume error
        v_before = before.masks["gland"].sum() * before.voxel_volume_ml
        v_after = after.masks["gland"].sum() * after.voxel_volume_ml
        assert v_after == pytest.approx(v_before, rel=0.05)
        if before.masks["lesion"].any():
            l_before = before.masks["lesion"].sum() * before.voxel_volume_ml
            l_after = after.masks["lesion"].sum() * after.voxel_volume_ml
            assert l_after == pytest.approx(l_before, rel=0.25)
        # intensities preserved by linear interpolation (no rescaling)
        g_before = np.median(before.images["ADC"][before.masks["gland"] > 0])
        g_after = np.median(after.images["ADC"][after.masks["gland"] > 0])
        assert g_after == pytest.approx(g_before, rel=0.05)
    # physical position: the crop sits where the gland is in the source
    src = small.read_image(small.case_ids[0], "gland")
    dst = out.read_image(small.case_ids[0], "gland")
    centre_src = src.TransformContinuousIndexToPhysicalPoint(
        list(np.argwhere(sitk.GetArrayFromImage(src) > 0).mean(axis=0)[::-1]))
    centre_dst = dst.TransformContinuousIndexToPhysicalPoint([31.5, 31.5, 31.5])
    assert np.allclose(centre_src, centre_dst, atol=1.0)


def test_padding_outside_the_source_is_zero(small, tmp_path):
    # a box larger than the source field of view (76.8 mm in-plane) gets zeros at the border
    out = preprocess(small.subset(small.case_ids[:1]), spacing=(1.0, 1.0, 2.0), crop_shape=(32, 96, 96),
                     out_dir=tmp_path / "big")
    case = out.load_case(out.case_ids[0])
    assert (case.images["T2W"][:, :, 0] == 0).all() and (case.images["T2W"][:, :, -1] == 0).all()
    assert case.images["T2W"][8:24, 48, 48].min() > 0  # (the z ends may leave the source)


def test_cached_by_content_and_settings(small, monkeypatch):
    one = small.subset(small.case_ids[:1])
    first = preprocess(one, spacing=(1.0, 1.0, 2.0), crop_shape=(32, 64, 64))
    calls = []
    real = preprocess_module._preprocess_case
    monkeypatch.setattr(preprocess_module, "_preprocess_case", lambda *a: calls.append(a) or real(*a))
    again = preprocess(one, spacing=(1.0, 1.0, 2.0), crop_shape=(32, 64, 64))
    assert calls == [] and again.root == first.root
    other = preprocess(one, spacing=(1.0, 1.0, 2.0), crop_shape=(32, 32, 32))
    assert len(calls) == 1 and other.root != first.root
    assert load_cohort(other.root).load_case(one.case_ids[0]).shape == (32, 32, 32)
    # a damaged stored result is rebuilt, not trusted
    other.path(one.case_ids[0], "T2W").write_bytes(b"garbage")
    rebuilt = preprocess(one, spacing=(1.0, 1.0, 2.0), crop_shape=(32, 32, 32))
    assert len(calls) == 2
    assert rebuilt.load_case(one.case_ids[0]).shape == (32, 32, 32)


def test_bad_settings(small):
    with pytest.raises(ValueError, match="spacing"):
        preprocess(small, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="crop_shape"):
        preprocess(small, crop_shape=(0, 64, 64))


def test_resampling_helpers():
    image = sitk.GetImageFromArray(np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8))
    image.SetSpacing((1.0, 1.0, 2.0))
    fine = resample_to_spacing(image, (0.5, 0.5, 1.0))
    assert fine.GetSize() == (16, 12, 8)
    # the physical extent is kept: first voxel edge stays at -0.5 mm
    assert fine.GetOrigin()[0] - 0.25 == pytest.approx(-0.5)
    mask = sitk.GetImageFromArray((np.arange(4 * 6 * 8).reshape(4, 6, 8) % 3).astype(np.uint8))
    mask.CopyInformation(image)
    on_fine = resample_to_reference(mask, fine, is_mask=True)
    assert set(np.unique(sitk.GetArrayFromImage(on_fine))) == {0, 1, 2}  # labels stay labels
    box = crop_grid((10.0, 20.0, 30.0), (0.5, 0.5, 1.0), (8, 16, 32))
    assert box.GetSize() == (32, 16, 8)
    centre = box.TransformContinuousIndexToPhysicalPoint([15.5, 7.5, 3.5])
    assert centre == pytest.approx((10.0, 20.0, 30.0))
