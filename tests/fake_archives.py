"""Small stand-ins for the public prostate MRI data sets, in their real layouts and formats.

Used by tests/test_fetch.py. Each builder writes tiny images (a few thousand voxels) into the
archive layout the real download has, so the converters in radiolens.data.datasets run on them
unchanged:

* MSD Task05_Prostate: ``Task05_Prostate.tar`` with ``dataset.json``, ``imagesTr`` (4D NIfTI,
  channels T2 and ADC), ``labelsTr`` (1 = PZ, 2 = TZ), ``imagesTs`` and the macOS ``._*``
  resource-fork files the real tarball carries.
* PI-CAI: ``picai_public_images_fold0.zip`` with ``<patient>/<patient>_<study>_{t2w,adc,hbv,
  cor,sag}.mha`` (ADC/HBV on a coarser DWI grid), plus the picai_labels files (marksheet with
  the real columns, expert lesion masks with ISUP labels, AI gland and zones on other grids).
* Prostate158: ``prostate158_train.zip`` with ``prostate158_train/{train,valid}.csv`` and
  ``train/<ID>/{t2,adc,dwi,t2_anatomy_reader1,adc_tumor_reader1,...}.nii.gz``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pooch
import SimpleITK as sitk


class FakeWeb:
    """A stand-in for the internet, as pooch sees it.

    ``files`` maps URLs to local files; ``zenodo`` maps a DOI to ``{file name: (local file,
    md5)}``, the checksums the fake Zenodo record declares. :meth:`install` replaces pooch's
    HTTP download with a copy and pooch's DOI resolution with the fake records; pooch's
    checksum verification still runs. ``requests`` lists every URL asked for.
    """

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.zenodo: dict[str, dict[str, tuple[Path, str]]] = {}
        self.requests: list[str] = []

    def install(self, setattr) -> FakeWeb:
        """Patch pooch with ``setattr(target, name, value)`` (e.g. ``monkeypatch.setattr``)."""
        web = self

        def download(downloader, url, output_file, pup, check_only=False):
            web.requests.append(url)
            if url not in web.files:
                raise RuntimeError(f"404: the fake web has no {url}")
            if check_only:
                return True
            if isinstance(output_file, (str, Path)):
                shutil.copyfile(web.files[url], output_file)
            else:
                output_file.write(Path(web.files[url]).read_bytes())
            return None

        def doi_to_repository(doi, **kwargs):
            doi = doi.rstrip("/")  # pooch passes a base_url's DOI with its trailing slash
            if doi not in web.zenodo:
                raise ValueError(f"fake Zenodo has no record {doi}")
            return _FakeZenodoRecord(web, doi)

        setattr(pooch.HTTPDownloader, "__call__", download)
        setattr(pooch.core, "doi_to_repository", doi_to_repository)
        setattr(pooch.downloaders, "doi_to_repository", doi_to_repository)
        return self


class _FakeZenodoRecord:
    def __init__(self, web: FakeWeb, doi: str) -> None:
        self.web, self.doi = web, doi
        self.files = web.zenodo[doi]

    def populate_registry(self, pup) -> None:
        for name, (_, checksum) in self.files.items():
            pup.registry[name] = f"md5:{checksum}"

    def download_url(self, name: str) -> str:
        url = f"https://zenodo.org/records/{self.doi.rsplit('.', 1)[-1]}/files/{name}?download=1"
        self.web.files[url] = self.files[name][0]
        return url


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _ellipsoid(shape_zyx, centre, radii) -> np.ndarray:
    z, y, x = np.indices(shape_zyx, dtype=float)
    cz, cy, cx = centre
    rz, ry, rx = radii
    return ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _zones(shape_zyx, rng) -> np.ndarray:
    """0 background, 1 peripheral zone (the outer shell), 2 transition zone (an inner,
    slightly anterior ellipsoid), as on axial prostate MRI (y grows posteriorly)."""
    nz, ny, nx = shape_zyx
    centre = (nz / 2 - 0.5, ny / 2 + rng.uniform(-1, 1), nx / 2 + rng.uniform(-1, 1))
    radii = (nz / 2.5, ny / 3.2, nx / 2.8)
    gland = _ellipsoid(shape_zyx, centre, radii)
    inner_centre = (centre[0], centre[1] - 0.15 * radii[1], centre[2])
    inner = _ellipsoid(shape_zyx, inner_centre, (radii[0] * 0.8, radii[1] * 0.6, radii[2] * 0.6))
    zones = np.zeros(shape_zyx, dtype=np.uint8)
    zones[gland] = 1
    zones[gland & inner] = 2
    return zones


def _blob_in(zones: np.ndarray, label: int, radii) -> np.ndarray:
    """A small ellipsoid lesion centred in the middle voxel of one zone, clipped to it."""
    voxels = np.argwhere(zones == label)
    centre = voxels[len(voxels) // 2]
    return _ellipsoid(zones.shape, centre, radii) & (zones == label)


def _image(array_zyx, spacing, origin, pixel=None):
    img = sitk.GetImageFromArray(array_zyx if pixel is None else array_zyx.astype(pixel))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    return img


def _write(img, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


# --------------------------------------------------------------------------------------------
# MSD Task05_Prostate
# --------------------------------------------------------------------------------------------
@dataclass
class MSDFake:
    archive: Path
    md5: str
    labels: dict[str, np.ndarray]  # case -> (z, y, x) zone labels as published
    t2: dict[str, np.ndarray]
    adc: dict[str, np.ndarray]
    spacing: tuple[float, float, float]


def make_msd_tar(
    folder: Path, n_cases: int = 10, seed: int = 0, shape_xyz: tuple[int, int, int] = (20, 18, 6)
) -> MSDFake:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "msd_staging"
    task = staging / "Task05_Prostate"
    spacing = (0.625, 0.625, 3.6)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [40.0, 30.0, -10.0]
    labels, t2s, adcs = {}, {}, {}
    for i in range(n_cases):
        case = f"prostate_{i:02d}"
        zones_zyx = _zones(shape_xyz[::-1], rng)
        t2 = rng.uniform(200, 400, shape_xyz[::-1]).astype(np.float32) + 300 * (zones_zyx == 1)
        adc = rng.uniform(1200, 1800, shape_xyz[::-1]).astype(np.float32)
        volume = np.stack([t2.transpose(2, 1, 0), adc.transpose(2, 1, 0)], axis=-1)
        (task / "imagesTr").mkdir(parents=True, exist_ok=True)
        (task / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, affine), task / "imagesTr" / f"{case}.nii.gz")
        nib.save(
            nib.Nifti1Image(zones_zyx.transpose(2, 1, 0).astype(np.uint8), affine),
            task / "labelsTr" / f"{case}.nii.gz",
        )
        # the real tarball carries macOS resource forks next to every file
        (task / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 not an image")
        labels[case], t2s[case], adcs[case] = zones_zyx, t2, adc
    (task / "imagesTs").mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(np.zeros((*shape_xyz, 2), np.float32), affine),
        task / "imagesTs" / "prostate_99.nii.gz",
    )
    description = {
        "name": "PROSTATE",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": n_cases,
        "numTest": 1,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in labels
        ],
        "test": ["./imagesTs/prostate_99.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(description, indent=1))
    archive = folder / "Task05_Prostate.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname="Task05_Prostate")
    return MSDFake(archive, md5(archive), labels, t2s, adcs, spacing)


# --------------------------------------------------------------------------------------------
# PI-CAI
# --------------------------------------------------------------------------------------------
MARKSHEET_COLUMNS = [
    "patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
    "histopath_type", "lesion_PIRADS", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa",
    "center",
]

# (patient, study, lesion_PIRADS, expected group, lesion source, center)
PICAI_CASES = [
    ("10000", "1000000", "", 0, "resampled", "RUMC"),
    ("10001", "1000001", "2", 0, "resampled", "ZGT"),
    ("10002", "1000002", "3", 1, "resampled", "PCNN"),
    ("10003", "1000003", "4,2", 2, "resampled", "RUMC"),
    ("10004", "1000004", "5,N/A", 3, "pooch25", "RUMC"),
    ("10005", "1000005", "N/A", None, None, "ZGT"),
    ("10006", "1000006", "4", 2, "resampled", "PCNN"),
    ("10007", "1000007", "2,5,3", 3, "resampled", "RUMC"),
    ("10008", "1000008", "3,3", 1, "resampled", "ZGT"),
    ("10008", "1000009", "2,2", 0, "resampled", "ZGT"),  # a second study of one patient
]


@dataclass
class PicaiFake:
    fold_zip: Path
    fold_md5: str
    registry: Path
    urls: dict[str, Path]  # label file URL -> local file
    lesions: dict[str, np.ndarray] = field(default_factory=dict)  # case -> binary on T2 grid
    glands: dict[str, np.ndarray] = field(default_factory=dict)
    t2_shape: tuple[int, int, int] = (8, 32, 32)
    t2_spacing: tuple[float, float, float] = (0.5, 0.5, 3.0)


def make_picai(
    folder: Path,
    labels_url: str,
    seed: int = 1,
    t2_shape: tuple[int, int, int] = (8, 32, 32),
    dwi_shape: tuple[int, int, int] = (8, 16, 16),
) -> PicaiFake:
    """PI-CAI fold 0 and its labels; shapes are (z, y, x), the DWI grid covers the T2 field."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t2_spacing, origin = (0.5, 0.5, 3.0), (-8.0, -8.0, -12.0)
    dwi_spacing = (t2_shape[2] * 0.5 / dwi_shape[2], t2_shape[1] * 0.5 / dwi_shape[1], 3.0)
    labels_dir = folder / "picai_labels"
    urls: dict[str, Path] = {}
    registry_rows = []
    fake = PicaiFake(folder / "picai_public_images_fold0.zip", "", folder / "registry.tsv", urls,
                     t2_shape=t2_shape, t2_spacing=t2_spacing)

    def label(kind_folder: str, kind: str, case: str, img) -> None:
        path = _write(img, labels_dir / kind_folder / f"{case}.nii.gz")
        urls[f"{labels_url}/{kind_folder}/{case}.nii.gz"] = path
        registry_rows.append((kind, case, md5(path)))

    with zipfile.ZipFile(fake.fold_zip, "w") as zf:
        for patient, study, _, _, lesion_source, _ in PICAI_CASES:
            case = f"{patient}_{study}"
            zones = _zones(t2_shape, rng)
            gland = zones > 0
            t2 = rng.uniform(100, 300, t2_shape) + 200 * (zones == 1)
            sequences = {
                "t2w": _image(t2, t2_spacing, origin, np.int16),
                "adc": _image(rng.uniform(800, 1800, dwi_shape), dwi_spacing, origin, np.int16),
                "hbv": _image(rng.uniform(5, 40, dwi_shape), dwi_spacing, origin, np.float32),
                "cor": _image(rng.uniform(0, 1, (4, 8, 8)), (1, 1, 1), origin, np.int16),
                "sag": _image(rng.uniform(0, 1, (4, 8, 8)), (1, 1, 1), origin, np.int16),
            }
            for seq, img in sequences.items():
                buffer = folder / f"tmp_{seq}.mha"
                sitk.WriteImage(img, str(buffer), True)
                zf.write(buffer, f"{patient}/{case}_{seq}.mha")
                buffer.unlink()
            label("anatomical_delineations/whole_gland/AI/Guerbet23", "gland_guerbet23", case,
                  _image(gland.astype(np.uint8), t2_spacing, origin))
            # the AI zones come on their own grid (fewer slices, shifted origin), as the real ones
            z0 = 1
            zones_img = _image(zones[z0:-1], t2_spacing,
                               (origin[0], origin[1], origin[2] + z0 * t2_spacing[2]), np.uint8)
            label("anatomical_delineations/zonal_pz_tz/AI/HeviAI23", "zones_heviai23", case, zones_img)
            lesion = np.zeros(t2_shape, dtype=np.uint16)
            if lesion_source is not None and case != "10000_1000000":
                blob = _blob_in(zones, 1, (1.2, t2_shape[1] / 12.8, t2_shape[2] / 12.8))
                lesion[blob] = 3  # ISUP 3, as the expert masks carry ISUP grades
            if lesion_source == "resampled":
                label("csPCa_lesion_delineations/human_expert/resampled", "lesion_resampled", case,
                      _image(lesion, t2_spacing, origin))
            elif lesion_source == "pooch25":
                label("csPCa_lesion_delineations/human_expert/Pooch25", "lesion_pooch25", case,
                      _image((lesion > 0).astype(np.uint8), t2_spacing, origin))
            if lesion_source is not None:
                fake.lesions[case] = lesion > 0
            fake.glands[case] = gland
    fake.fold_md5 = md5(fake.fold_zip)

    marksheet = labels_dir / "clinical_information" / "marksheet.csv"
    marksheet.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(MARKSHEET_COLUMNS)]
    for patient, study, pirads, group, _, center in PICAI_CASES:
        positive = group is not None and group >= 2
        cells = [patient, study, "2020-01-01", "66", "8.5", "0.15", "57",
                 "MRBx" if positive else "", f'"{pirads}"' if "," in pirads else pirads,
                 "4+3" if positive else "", "3" if positive else "", "3" if positive else "0",
                 "YES" if positive else "NO", center]
        lines.append(",".join(cells))
    marksheet.write_text("\n".join(lines) + "\n")
    urls[f"{labels_url}/clinical_information/marksheet.csv"] = marksheet
    registry_rows.insert(0, ("marksheet", "-", md5(marksheet)))
    fake.registry.write_text(
        "# fake registry\nkind\tcase\tmd5\n" + "".join(f"{k}\t{c}\t{m}\n" for k, c, m in registry_rows)
    )
    return fake


# --------------------------------------------------------------------------------------------
# Prostate158
# --------------------------------------------------------------------------------------------
@dataclass
class Prostate158Fake:
    archive: Path
    md5: str
    anatomy: dict[str, np.ndarray]  # case folder -> published labels (1 = TZ, 2 = PZ)
    tumour: dict[str, np.ndarray | None]
    split: dict[str, str]


def make_prostate158_zip(
    folder: Path, n_cases: int = 10, seed: int = 2, pz_label: int = 2
) -> Prostate158Fake:
    """Prostate158's training zip; ``pz_label`` is the anatomy label of the peripheral zone
    (2 in the published data; 1 builds a data set that breaks that convention)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape, spacing, origin = (6, 24, 24), (0.4, 0.4, 3.0), (0.0, 0.0, 0.0)
    fake = Prostate158Fake(folder / "prostate158_train.zip", "", {}, {}, {})
    header = ("ID,t2,adc,dwi,t2_anatomy_reader1,t2_anatomy_reader2,t2_tumor_reader1,"
              "adc_tumor_reader1,adc_tumor_reader2")
    rows = {"train": [header], "valid": [header]}
    with zipfile.ZipFile(fake.archive, "w") as zf:

        def add(img, name: str) -> None:
            buffer = io.BytesIO()
            path = folder / "tmp.nii.gz"
            sitk.WriteImage(img, str(path), True)
            buffer.write(path.read_bytes())
            path.unlink()
            zf.writestr(f"prostate158_train/{name}", buffer.getvalue())

        for i in range(n_cases):
            cid = f"{20 + i:03d}"
            zones = _zones(shape, rng)  # 1 = PZ, 2 = TZ
            published = np.zeros(shape, np.uint8)
            published[zones == 2] = 3 - pz_label  # Prostate158: 1 = transition zone
            published[zones == 1] = pz_label  # 2 = peripheral zone
            base = f"train/{cid}"
            add(_image(rng.uniform(0, 500, shape), spacing, origin, np.float32), f"{base}/t2.nii.gz")
            add(_image(rng.uniform(500, 2000, shape), spacing, origin, np.float32), f"{base}/adc.nii.gz")
            add(_image(rng.uniform(0, 50, shape), spacing, origin, np.float32), f"{base}/dwi.nii.gz")
            add(_image(published, spacing, origin), f"{base}/t2_anatomy_reader1.nii.gz")
            tumour = None
            t2_tumour = adc_tumour = ""
            if i % 3 == 0:
                tumour = _blob_in(zones, 1, (1, 2, 2))
                add(_image(tumour.astype(np.float32), spacing, origin), f"{base}/adc_tumor_reader1.nii.gz")
                # the real T2 tumour masks mark lesions with the value 3
                add(_image(3 * tumour.astype(np.float32), spacing, origin), f"{base}/t2_tumor_reader1.nii.gz")
                adc_tumour, t2_tumour = f"{base}/adc_tumor_reader1.nii.gz", f"{base}/t2_tumor_reader1.nii.gz"
            elif i % 3 == 1:
                add(_image(np.zeros(shape, np.uint8), spacing, origin), f"{base}/empty.nii.gz")
                adc_tumour = t2_tumour = f"{base}/empty.nii.gz"
            split = "valid" if i >= n_cases - 2 else "train"
            rows[split].append(
                # IDs are not zero-padded in the tables; the second readers are often empty
                f"{int(cid)},{base}/t2.nii.gz,{base}/adc.nii.gz,{base}/dwi.nii.gz,"
                f"{base}/t2_anatomy_reader1.nii.gz,,{t2_tumour},{adc_tumour},"
            )
            fake.anatomy[cid], fake.tumour[cid], fake.split[cid] = published, tumour, split
        for split, lines in rows.items():
            zf.writestr(f"prostate158_train/{split}.csv", "\n".join(lines) + "\n")
    fake.md5 = md5(fake.archive)
    return fake
