"""Conversion speed of the public-data fetchers (radiolens.data.datasets), network mocked.

Builds archives in each data set's real layout at realistic image sizes (MSD: 320 x 320 x 20
4D NIfTI; PI-CAI: T2W 384 x 384 x 20 with DWI/ADC 128 x 128 x 20 and labels on other grids),
serves them through a fake web, and times the first conversion (download = a local copy,
checksum, extraction, resampling, writing, validation) and a re-run (which only loads the
existing cohort). Run: ``python benchmarks/bench_fetch.py [n_cases]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from radiolens.data.datasets import fetch_msd_prostate, fetch_picai, msd, picai  # noqa: E402

from fake_archives import FakeWeb, make_msd_tar, make_picai  # noqa: E402


def main(n_cases: int = 10) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(msd, "MSD_MD5", ""):
        tmp = Path(tmp)
        patches = []

        def setattr_(target, name, value):
            patcher = mock.patch.object(target, name, value)
            patcher.start()
            patches.append(patcher)

        web = FakeWeb().install(setattr_)
        try:
            msd_fake = make_msd_tar(tmp / "msd", n_cases=n_cases, shape_xyz=(320, 320, 20))
            web.files[msd.MSD_URL] = msd_fake.archive
            msd.MSD_MD5 = msd_fake.md5
            picai_fake = make_picai(tmp / "picai", picai.PICAI_LABELS_URL,
                               t2_shape=(20, 384, 384), dwi_shape=(20, 128, 128))
            web.files.update(picai_fake.urls)
            web.zenodo[picai.PICAI_IMAGES_DOI] = {picai_fake.fold_zip.name: (picai_fake.fold_zip, picai_fake.fold_md5)}
            setattr_(picai, "_PICAI_REGISTRY_PATH", picai_fake.registry)

            for name, call, n, shape in (
                ("msd_prostate", lambda: fetch_msd_prostate(tmp / "data", progress=False),
                 n_cases, "320x320x20 (T2+ADC 4D)"),
                ("picai", lambda: fetch_picai(tmp / "data", progress=False),
                 len(picai_fake.glands), "T2 384x384x20, DWI 128x128x20"),
            ):
                start = time.perf_counter()
                call()
                first = time.perf_counter() - start
                start = time.perf_counter()
                call()
                again = time.perf_counter() - start
                rows.append((name, n, shape, first, first / n, again))
        finally:
            for patcher in reversed(patches):
                patcher.stop()

    print(f"{'dataset':<14}{'cases':>6}  {'image size':<30}{'convert s':>10}{'s/case':>8}{'re-run s':>10}")
    for name, n, shape, first, per_case, again in rows:
        print(f"{name:<14}{n:>6}  {shape:<30}{first:>10.2f}{per_case:>8.2f}{again:>10.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
