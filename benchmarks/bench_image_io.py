"""Benchmark: what the checked image reader costs over a bare ITK read.

Run ``python benchmarks/bench_image_io.py`` (options: ``--shape``, ``--repeats``). Writes one
int16 image of the paper's grid (64 x 224 x 224 by default) as ``.nii.gz`` and ``.nii`` and
prints milliseconds per read: SimpleITK's ``ReadImage`` alone (no completeness check: a
truncated file comes back zero-filled), radiolens's ``read_image`` (the check plus that read),
the check alone, and ``read_array`` (nibabel on the checked bytes, the voxel checks' reader).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from radiolens.data.image_io import check_complete, read_array, read_image, simpleitk, write_image


def _ms(func, repeats: int) -> float:
    func()  # warm the page cache and the imports
    start = time.perf_counter()
    for _ in range(repeats):
        func()
    return (time.perf_counter() - start) / repeats * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 224, 224])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    itk = simpleitk()
    array = np.random.default_rng(0).normal(300, 50, args.shape).astype(np.int16)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"shape={tuple(args.shape)}  repeats={args.repeats}  load average at start={load:.1f}")
    print(f"{'file':>8} {'MB':>6} {'ITK ms':>8} {'read_image ms':>14} {'check ms':>9} {'read_array ms':>14}")
    with tempfile.TemporaryDirectory() as work:
        for suffix in (".nii.gz", ".nii"):
            path = write_image(array, Path(work) / f"image{suffix}", compress=suffix.endswith(".gz"))
            row = (
                _ms(lambda p=path: itk.ReadImage(str(p)), args.repeats),
                _ms(lambda p=path: read_image(p), args.repeats),
                _ms(lambda p=path: check_complete(p), args.repeats),
                _ms(lambda p=path: read_array(p), args.repeats),
            )
            size = path.stat().st_size / 1e6
            print(f"{suffix:>8} {size:6.1f} {row[0]:8.1f} {row[1]:14.1f} {row[2]:9.1f} {row[3]:14.1f}")


if __name__ == "__main__":
    main()
