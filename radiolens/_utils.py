"""Small helpers every layer shares: progress bars, JSON-safe values, optional imports.

One home for each, so that a progress bar, a NaN in a JSON file or a missing optional library
behaves the same in every step.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["cpu_seconds", "jsonable", "optional_import", "progress_bar", "torch_threads"]

#: What to install for each optional (or slow-to-import) library, named in the error message.
_INSTALL_HINTS: dict[str, str] = {
    "SimpleITK": "SimpleITK",
    "altair": "'altair>=5.4' vl-convert-python",
    "vl_convert": "vl-convert-python",
    "dask.distributed": "'radiolens[dask]'",
    "ipywidgets": "ipywidgets",
    "matplotlib": "matplotlib",
    "nibabel": "nibabel",
    "pooch": "pooch",
    "torch": "torch",
}


def optional_import(name: str, purpose: str) -> ModuleType:
    """Import a library on first use, with an error that says what needs it and how to install it.

    Parameters
    ----------
    name
        The module, e.g. ``"SimpleITK"`` or ``"dask.distributed"``.
    purpose
        What needs it, e.g. ``"reading images"`` (the error reads "reading images needs ...").

    Raises
    ------
    ImportError
        Naming the library and the ``pip install`` command.
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        top = name.split(".")[0]
        hint = _INSTALL_HINTS.get(name, _INSTALL_HINTS.get(top, top))
        raise ImportError(f"{purpose} needs {name}: pip install {hint}") from err


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 progress: bool = True, **kwargs: Any):
    """A ``tqdm.auto`` bar (hidden when ``progress`` is False); closes itself when done.

    Parameters
    ----------
    iterable
        What to iterate over; None for a bar updated by hand (``bar.update(n)``).
    total, desc
        As in tqdm.
    progress
        Show the bar.
    **kwargs
        Other tqdm options (``unit``, ``leave``...). Bars do not stay on screen by default.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    return tqdm(iterable, total=total, desc=desc, disable=not progress, **kwargs)


def jsonable(obj: Any) -> Any:
    """Plain JSON types: NaN/inf -> None, numpy -> Python, tables -> records, paths -> str.

    The one converter used wherever radiolens writes JSON (summaries, checkpoint cards,
    radiomics diagnostics), so a value is written the same way everywhere.
    """
    import numpy as np
    import pandas as pd

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, pd.Series):
        return jsonable(obj.to_dict())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)


@contextmanager
def torch_threads(n: int):
    """Run a block with torch limited to ``n`` threads (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its worker processes (radiomics' loky
    workers stay alive between calls, so the process tree is summed, not only reaped children)."""
    import resource

    try:
        import psutil
    except ImportError:  # psutil is optional: count this process and reaped children only
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # ended meanwhile: its time is in its parent's children_* fields
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total
