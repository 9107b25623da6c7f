"""The records of one notebook, saved atomically after every addition, and found again on resume."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

from ..results import ResultsFileError, load_records, save_records

__all__ = ["ResultStore"]


class ResultStore:
    """The records of one notebook, saved atomically after every addition (``results.save_records``).

    ``resume=True`` loads the records already at ``path`` whose ``config`` matches
    ``match`` (e.g. ``{"profile": "mini", "quick": False}``), so a restarted notebook
    skips finished runs (:meth:`find`); the others (another model, another mode) would be
    overwritten by the next save, so they are first kept aside in ``<file>.unmatched``, with a
    warning. Otherwise the file is started afresh.
    """

    def __init__(self, path, *, match: dict | None = None, resume: bool = False):
        self.path, self.match = Path(path), dict(match or {})
        self.records: list[dict] = []
        self._lock = threading.Lock()  # selections running at once (a concurrent executor) add from threads
        if resume and self.path.exists():  # an unreadable file raises results.ResultsFileError, untouched
            found = load_records(self.path)
            self.records = [r for r in found if self._matches(r)]
            others = [r for r in found if not self._matches(r)]
            if others:
                kept = self.path.with_name(self.path.name + ".unmatched")
                save_records(kept, others)
                warnings.warn(f"{len(others)} of the {len(found)} records of {self.path} were made with other "
                              f"settings than {self.match} and are not resumed; they are kept in {kept}, and this "
                              f"run resumes the {len(self.records)} matching ones")
        elif self.path.exists():  # a fresh run replaces the file; an unreadable one is kept aside first
            try:
                load_records(self.path)
            except ResultsFileError as err:
                kept = self.path.with_name(self.path.name + ".unreadable")
                os.replace(self.path, kept)
                warnings.warn(f"{err.args[0].split(';')[0]}; kept as {kept}, and this run starts {self.path} afresh")

    def _matches(self, record: dict) -> bool:
        return all(record["config"].get(k) == v for k, v in self.match.items())

    def add(self, *records: dict) -> None:
        """Append ``records`` (replacing earlier ones with the same identity) and save the file."""
        with self._lock:
            for rec in records:
                rec["config"].update({k: v for k, v in self.match.items() if k not in rec["config"]})
                key = _identity(rec)
                self.records = [r for r in self.records if _identity(r) != key]
                self.records.append(rec)
            save_records(self.path, self.records)

    def find_all(self, *, method: str, task: str, **config) -> list[dict]:
        """Return the stored records of ``method`` / ``task`` whose config has every given value."""
        return [r for r in self.records if r["method"] == method and r["task"] == task
                and all(r["config"].get(k) == v for k, v in config.items())]

    def find(self, *, method: str, task: str, **config) -> dict | None:
        """Return the one stored record matching (see :meth:`find_all`), or None."""
        found = self.find_all(method=method, task=task, **config)
        return found[-1] if found else None


def _identity(record: dict) -> tuple:
    c = record["config"]
    keys = ("forget_class", "seed", "variant", "synthetic_prior", "forget_ratio", "lr", "alpha", "run_task",
            "ablation", "value", "oracle")
    ident = tuple((k, repr(c.get(k))) for k in keys)
    if record["task"] != "selection":  # one result per method / task / target / seed / variant
        ident = tuple(x for x in ident if x[0] not in ("lr", "alpha"))
    return (record["method"], record["task"]) + ident
