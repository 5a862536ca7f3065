"""Small NIfTI cases for the radiomics tests, and a script the SIGKILL tests run.

As a script: ``python _radiomics_helpers.py SPEC.json`` runs ``extract_units`` on the units
and settings in SPEC (``units``, ``settings``, ``cache_dir``, ``n_jobs``, ``out``) and writes
the per-unit statuses to ``out`` as JSON. The tests kill it (or its workers) mid-run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MODALITIES = ("T2W", "DWI", "ADC")

#: Settings small enough for fast tests: Original image, two classes.
REDUCED_SETTINGS = {
    "setting": {"normalize": True, "normalizeScale": 100, "binCount": 16, "label": 1, "preCrop": True},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": [], "glcm": []},
}


def _write(array: np.ndarray, path: Path, spacing=(0.5, 0.5, 1.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def ellipsoid(shape, radii, center=None) -> np.ndarray:
    center = [s / 2 for s in shape] if center is None else center
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    dist = ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2
    return (dist <= 1).astype(np.uint8)


def write_case(folder: Path, case_id: str, seed: int, shape=(12, 24, 24), lesion: bool = True) -> dict[str, Path]:
    """Three smooth random images, a gland ellipsoid and (optionally) a small lesion."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for k, modality in enumerate(MODALITIES):
        noise = rng.normal(0, 1, size=shape)
        # A little smoothing gives texture that is not pure noise.
        smooth = (noise + np.roll(noise, 1, 1) + np.roll(noise, 1, 2)) / 3
        array = (200 + 60 * k + 40 * smooth + 5 * seed).astype(np.float32)
        paths[modality] = _write(array, folder / f"{case_id}_{modality}.nii.gz")
    gland = ellipsoid(shape, (shape[0] / 3, shape[1] / 3, shape[2] / 3))
    paths["gland"] = _write(gland, folder / f"{case_id}_gland.nii.gz")
    les = np.zeros(shape, np.uint8)
    if lesion:
        les = ellipsoid(shape, (2, 3, 3), center=(shape[0] / 2, shape[1] / 2 + 2, shape[2] / 2))
    paths["lesion"] = _write(les, folder / f"{case_id}_lesion.nii.gz")
    return paths


class FakeCohort:
    """The two things radiolens.radiomics needs from a Cohort: ``case_ids`` and ``path``."""

    def __init__(self, cases: dict[str, dict[str, Path | None]]):
        self.cases = cases

    @property
    def case_ids(self) -> list[str]:
        return list(self.cases)

    def path(self, case_id: str, key: str) -> Path | None:
        return self.cases[case_id].get(key)


def make_cohort(folder: Path, n_cases: int, shape=(12, 24, 24), no_lesion=()) -> FakeCohort:
    cases = {}
    for i in range(n_cases):
        case_id = f"case{i:02d}"
        cases[case_id] = write_case(folder, case_id, seed=i, shape=shape, lesion=case_id not in no_lesion)
    return FakeCohort(cases)


def _main(spec_path: str) -> None:
    from radiolens.radiomics import WorkUnit, extract_units

    spec = json.loads(Path(spec_path).read_text())
    units = [WorkUnit(**u) for u in spec["units"]]
    result = extract_units(
        units, settings=spec["settings"], n_jobs=spec["n_jobs"], cache_dir=spec["cache_dir"], progress=False
    )
    out = {"status": result.units["status"].tolist(), "pids": []}
    Path(spec["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1])


def unit_dicts(units) -> list[dict]:
    return [asdict(u) for u in units]
