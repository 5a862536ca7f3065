"""A tiny on-disk cohort for the encoder, pre-training and embedding tests (fast to read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_tiny_cohort(out_dir, n_cases=6, shape=(16, 32, 32), seed=0, splits=None):
    """``n_cases`` cases of smooth blobs + noise in three channels, with a gland mask.

    Splits default to train x (n - 2), val x 1, test x 1.
    """
    from radiolens.data import write_image, write_manifest

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    splits = splits or (["train"] * (n_cases - 2) + ["val", "test"])
    rows = []
    for i in range(n_cases):
        cid = f"tiny_{i:02d}"
        c = rng.uniform(-0.3, 0.3, 3)
        r = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        blob = np.exp(-r / rng.uniform(0.1, 0.3))
        gland = (r < 0.25).astype(np.uint8)
        images = {
            "T2W": 400 + 300 * blob + rng.normal(0, 20, shape),
            "DWI": 20 + 15 * blob * (1 + 0.5 * np.sin(6 * x)) + rng.normal(0, 2, shape),
            "ADC": 1500 - 600 * blob + rng.normal(0, 50, shape),
        }
        row = {"case_id": cid, "split": splits[i], "pirads_group": i % 4}
        for key, arr in images.items():
            row[key] = str(write_image(np.clip(arr, 1, None).astype(np.float32), out_dir / f"{cid}_{key}.nii.gz", spacing=(1, 1, 2)))
        row["gland"] = str(write_image(gland, out_dir / f"{cid}_gland.nii.gz", spacing=(1, 1, 2)))
        rows.append(row)
    return write_manifest(pd.DataFrame(rows), out_dir)
