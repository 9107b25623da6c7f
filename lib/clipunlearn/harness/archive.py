"""The unlearned models of reported runs, kept on disk as their difference from the starting model.

The attacks (notebook 45) need the very model each reported benchmark run ended with. Rebuilding it reruns the
method (deterministic, but seconds to tens of seconds a run); a :class:`ModelArchive` keeps it instead, written by
the reference hook (``reference.reference_fn``) on every reported run measured against a retrained model, and
read back bit for bit. A file holds only what the run changed (``checkpoints.diff_state``): the tensors that
differ from the starting model, and of a matrix where few rows changed (the token embedding: the few dozen rows
of its 49,408 that the captions use) just those rows; about 7 MB for a run that trains every weight of the mini
CLIP, against 32 MB.

A file is found by the run's identity (:func:`archive_key`) under a folder named by the starting model's
fingerprint, and returned only when the metrics it was saved with equal the record's: a record of another
run with the same identity (other settings) gets None, and its caller rebuilds the model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path

from ..checkpoints import CheckpointError, apply_state_delta, diff_state, fingerprint_state, load_torch_file
from ..paths import get_cache_dir
from ..results import save_torch_atomic

__all__ = ["ARCHIVE_FIELDS", "ModelArchive", "archive_key"]

#: The config values that, with the method, task and metrics, identify a reported run's model.
ARCHIVE_FIELDS = ("forget_class", "seed", "variant", "synthetic_prior", "forget_ratio", "lr", "alpha", "steps",
                  "batch_size")
#: The metrics a file must share with the record it is loaded for.
CHECKED_METRICS = ("forget_acc", "retain_acc", "sibling_acc", "other_acc")


def checked_metrics(record: dict) -> dict:
    """Return the record's :data:`CHECKED_METRICS` (None where it has none): what a file is saved and found with."""
    return {k: record["metrics"].get(k) for k in CHECKED_METRICS}


def archive_key(record: dict) -> str:
    """Return the file stem of ``record``'s model: ``<method>-<task>-<sha1 of its identity, 16 hex>``."""
    ident = {"method": record["method"], "task": record["task"],
             **{k: record["config"][k] for k in ARCHIVE_FIELDS if k in record["config"]}}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest()[:16]
    return f"{record['method']}-{record['task']}-{digest}".replace("/", "_").replace(":", "_")


class ModelArchive:
    """Reported runs' unlearned models of one starting model, under ``<root>/<base fingerprint>/``.

    ``base``: the starting model (every run's copy came from it; never changed here); ``root``: default
    ``<cache>/reported``.
    """

    def __init__(self, base, *, root=None):
        self.base = base
        self.base_state = {k: v.detach() for k, v in base.state_dict().items()}
        self.fingerprint = fingerprint_state(self.base_state)
        self.folder = Path(root or get_cache_dir() / "reported") / self.fingerprint

    def path_for(self, record: dict) -> Path:
        """Return the file of ``record``'s model (whether or not it exists)."""
        return self.folder / f"{archive_key(record)}.pt"

    def save(self, model, record: dict) -> Path | None:
        """Keep ``model`` (the run of ``record``) and return its file; None for a run without test metrics or
        whose tensors are not the base's (an adapter left unmerged), which is not kept."""
        metrics = checked_metrics(record)
        if metrics["forget_acc"] is None:
            return None
        try:
            delta = diff_state(model.state_dict(), self.base_state)
        except ValueError:
            return None
        return save_torch_atomic({"base": self.fingerprint, "key": archive_key(record), "metrics": metrics,
                                  **delta}, self.path_for(record))

    def load(self, record: dict):
        """Return a copy of the base with ``record``'s archived model loaded, or None when there is none, or when
        the file was saved for other metrics (another run with the same identity). A corrupted file is warned
        about, deleted and treated as missing (the caller rebuilds the run)."""
        path = self.path_for(record)
        if not path.is_file():
            return None
        try:
            saved = load_torch_file(path, restore="it was deleted; the run is rebuilt instead")
        except CheckpointError as err:
            warnings.warn(str(err))
            path.unlink(missing_ok=True)
            return None
        if saved.get("base") != self.fingerprint or saved.get("metrics") != checked_metrics(record):
            return None
        model = copy.deepcopy(self.base)
        model.load_state_dict(apply_state_delta(self.base_state, saved))
        return model.eval()
