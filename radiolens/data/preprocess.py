"""Preprocessing: resample a cohort to a target spacing and crop a fixed box around the gland.

The paper resamples every study to 0.5 x 0.5 x 1.0 mm and feeds the encoder a 64 x 224 x 224
(D, H, W) crop. :func:`preprocess` does both in one SimpleITK resampling per file: the output
grid has the target spacing, the input's orientation, the requested size, and is centred on
the gland mask's centre of mass (the image centre when a case has no gland mask). Images are
interpolated linearly, masks by nearest neighbour; voxels outside the source image are 0.

The result is a new cohort (same manifest columns, same labels and splits) written atomically
into a folder keyed by the source cohort's content hash and the settings, so calling it again
with the same inputs returns the stored result at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radiolens._utils import progress_bar
from radiolens.cache import atomic_write_text, default_cache_dir, step_key
from radiolens.data.cohort import Cohort, load_cohort, write_manifest
from radiolens.data.contract import FILE_KEYS, MASK_KEYS, inside
from radiolens.data.image_io import resample_to_reference, simpleitk, write_image

__all__ = ["crop_grid", "preprocess", "resample_to_spacing"]

logger = logging.getLogger(__name__)


def crop_grid(
    centre: Sequence[float],
    spacing: Sequence[float],
    crop_shape: Sequence[int],
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
):
    """An empty ``SimpleITK.Image`` describing a box of ``crop_shape`` (D, H, W) voxels of
    ``spacing`` (x, y, z) mm centred on the physical point ``centre`` (x, y, z)."""
    itk = simpleitk()
    D, H, W = (int(s) for s in crop_shape)
    size = np.array([W, H, D], dtype=float)
    spacing = np.asarray(spacing, dtype=float)
    rot = np.asarray(direction, dtype=float).reshape(3, 3)
    origin = np.asarray(centre, dtype=float) - rot @ ((size - 1) / 2.0 * spacing)
    ref = itk.Image(int(W), int(H), int(D), itk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetDirection([float(d) for d in rot.ravel()])
    ref.SetOrigin([float(o) for o in origin])
    return ref


def resample_to_spacing(image, spacing: Sequence[float], is_mask: bool = False):
    """Resample a ``SimpleITK.Image`` to a new voxel size, keeping its extent and orientation."""
    itk = simpleitk()
    old_size = np.asarray(image.GetSize(), dtype=float)
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    spacing = np.asarray(spacing, dtype=float)
    size = np.maximum(1, np.round(old_size * old_spacing / spacing)).astype(int)
    ref = itk.Image([int(s) for s in size], itk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetDirection(image.GetDirection())
    # keep the physical edge of the first voxel where it was
    rot = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + rot @ ((spacing - old_spacing) / 2.0)
    ref.SetOrigin([float(o) for o in origin])
    return resample_to_reference(image, ref, is_mask)


def _gland_centre(cohort: Cohort, case_id: str, reference) -> tuple[np.ndarray, float | None]:
    """Physical centre of mass of the gland mask (or of the image) and the gland's extent."""
    itk = simpleitk()
    if cohort.has(case_id, "gland"):
        gland = cohort.read_image(case_id, "gland")
        array = itk.GetArrayViewFromImage(gland)
        idx = np.argwhere(array > 0)
        if idx.size:
            centre_idx = idx.mean(axis=0)[::-1]  # (x, y, z) continuous index
            centre = np.asarray(gland.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_idx]))
            extent = (idx.max(axis=0) - idx.min(axis=0) + 1)[::-1] * np.asarray(gland.GetSpacing())
            return centre, extent
    size = np.asarray(reference.GetSize(), dtype=float)
    centre = reference.TransformContinuousIndexToPhysicalPoint([float(c) for c in (size - 1) / 2.0])
    return np.asarray(centre), None


def _preprocess_case(cohort: Cohort, case_id: str, spacing, crop_shape, out: Path) -> dict:
    keys = [k for k in FILE_KEYS if cohort.has(case_id, k)]
    first = cohort.read_image(case_id, keys[0])
    centre, extent = _gland_centre(cohort, case_id, first)
    box = crop_grid(centre, spacing, crop_shape, first.GetDirection())
    if extent is not None:
        D, H, W = crop_shape
        fov = np.array([W, H, D]) * np.asarray(spacing)
        if np.any(extent > fov):
            logger.warning(
                "case %r: gland extent %s mm exceeds the crop %s mm; the crop cuts the gland",
                case_id, tuple(round(float(e), 1) for e in extent), tuple(round(float(f), 1) for f in fov),
            )
    paths = {}
    itk = simpleitk()
    for key in keys:
        image = first if key == keys[0] else cohort.read_image(case_id, key)
        is_mask = key in MASK_KEYS
        out_img = resample_to_reference(image, box, is_mask)
        out_img = itk.Cast(out_img, itk.sitkUInt8 if is_mask else itk.sitkFloat32)
        rel = f"images/{case_id}_{key}.nii.gz"
        write_image(out_img, inside(out, rel))
        paths[key] = rel
    return paths


def preprocess(
    cohort: Cohort,
    spacing: Sequence[float] = (0.5, 0.5, 1.0),
    crop_shape: Sequence[int] = (64, 224, 224),
    out_dir: str | os.PathLike | None = None,
    n_jobs: int = 1,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Cohort:
    """Resample every case to ``spacing`` and crop a ``crop_shape`` box centred on the gland.

    Parameters
    ----------
    cohort
        The source cohort.
    spacing
        Target voxel size (x, y, z) in mm; the paper's is 0.5 x 0.5 x 1.0.
    crop_shape
        Box (D, H, W) in voxels; the paper's encoder crop is 64 x 224 x 224. Keep each side a
        multiple of 32 for the ConvNeXt encoder.
    out_dir
        Folder of the new cohort. Default ``<radiolens cache>/preprocessed/<key>``, the key
        hashing the source cohort's fingerprint and these settings (a cache hit returns the
        stored cohort without recomputing).
    n_jobs
        Worker processes (joblib).
    progress
        Progress bar.
    cache_dir
        The radiolens cache (default: the source cohort's, else
        :func:`radiolens.cache.default_cache_dir`).

    Returns
    -------
    Cohort
        Same case ids, labels, splits and extra columns; images float32, masks uint8. Labels
        (including ``gland_volume_ml``) are kept from the source: they describe the patient,
        not the grid.
    """
    spacing = tuple(float(s) for s in spacing)
    crop_shape = tuple(int(s) for s in crop_shape)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values (x, y, z), got {spacing}")
    if len(crop_shape) != 3 or min(crop_shape) < 1:
        raise ValueError(f"crop_shape must be three positive voxel counts (D, H, W), got {crop_shape}")
    settings = {"cohort": cohort.fingerprint, "spacing": spacing, "crop_shape": crop_shape}
    cache_key = step_key("preprocess", settings, length=16)
    cache_dir = cache_dir if cache_dir is not None else cohort.cache_dir
    out = Path(out_dir) if out_dir is not None else default_cache_dir(cache_dir) / "preprocessed" / cache_key
    out = out.expanduser().resolve()
    stamp = out / "preprocess.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == cache_key:
        try:
            logger.info("reusing preprocessed cohort in %s", out)
            # voxels checked again only for files changed since their last check
            return load_cohort(out, check_pixels=True, cache_dir=cache_dir)
        except Exception as err:  # an incomplete or damaged folder: rebuild it
            logger.warning("stored preprocessed cohort in %s unusable (%s); rebuilding", out, err)
    for name in ("manifest.csv", "manifest.parquet", "preprocess.json"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    ids = cohort.case_ids
    if n_jobs == 1:
        iterator = progress_bar(ids, desc="preprocess", progress=progress, leave=True)
        results = [_preprocess_case(cohort, c, spacing, crop_shape, out) for c in iterator]
    else:
        from joblib import Parallel, delayed

        done = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_preprocess_case)(cohort, c, spacing, crop_shape, out) for c in ids
        )
        results = list(progress_bar(done, total=len(ids), desc="preprocess", progress=progress, leave=True))
    frame = cohort.manifest.copy()
    for key in FILE_KEYS:
        frame[key] = [r.get(key) for r in results]
    new = write_manifest(frame.reset_index(), out, check_pixels=False, fill_volumes=False, cache_dir=cache_dir)
    atomic_write_text(stamp, json.dumps({"key": cache_key, "settings": settings}, indent=1))
    return new

