"""Results as small JSON records: config beside metrics, written atomically.

A results file is ``{"records": [record, ...]}``; a record is
``{"method", "task", "config", "metrics"}`` (plus optional extra keys such as
``"history"``). Figures regenerate from these files without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

REQUIRED_KEYS = ("method", "task", "config", "metrics")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value


def write_atomic(path, write_fn: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp)`` fills a temp file in the same folder, then it is renamed.

    Readers see the old file or the new one, never half of one; on any error the
    temp file is removed and the old file is kept. Every writer of the project
    (JSON records, checkpoints, synthetic sets) goes through here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
    try:
        write_fn(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`write_atomic`)."""
    text = json.dumps(_to_jsonable(obj), indent=1, sort_keys=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def save_torch_atomic(obj: Any, path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`write_atomic`); load with ``weights_only=True``."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def make_record(*, method: str, task: str, config: dict, metrics: dict, **extra) -> dict:
    """Return one record ``{"method", "task", "config", "metrics", **extra}`` (JSON-ready)."""
    return _to_jsonable({"method": method, "task": task, "config": dict(config), "metrics": dict(metrics), **extra})


def save_records(path, records: Iterable[dict]) -> Path:
    """Check and write ``{"records": records}`` to ``path`` atomically; return the path."""
    records = list(records)
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"record {i} lacks {missing}; build records with make_record()")
    return write_json_atomic(path, {"records": records})


class ResultsFileError(ValueError):
    """A results file cannot be read (truncated or edited by hand); the message names it and the way out."""


def load_records(path, *, task: str | None = None, method: str | None = None) -> list[dict]:
    """Return the records of ``path``, optionally only those of one task and/or method."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}; run the notebook that writes it (./run_all.sh --only {path.stem})")
    try:
        records = json.loads(path.read_text())["records"]
        if not isinstance(records, list):
            raise TypeError(f"'records' is a {type(records).__name__}, not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ResultsFileError(
            f"{path} is not a results file ({err.__class__.__name__}: {err}); it may have been cut short. Nothing "
            f"was overwritten. Restore the committed copy with `git checkout -- {path.name}` in its folder, or move it "
            f"away and rerun its notebook (./run_all.sh --only {path.stem})") from err
    return [r for r in records if (task is None or r["task"] == task) and (method is None or r["method"] == method)]


def records_to_frame(records: list[dict]):
    """Return a pandas DataFrame with one row per record: method, task, then config and metric columns."""
    rows = [{"method": r["method"], "task": r["task"], **r["config"], **r["metrics"]} for r in records]
    return pd.DataFrame(rows)
