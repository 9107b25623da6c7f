"""Checkpoints: saving and loading state dicts, and the shipped mini CLIP with its hash.

Every checkpoint is loaded with ``torch.load(..., weights_only=True)`` and written
atomically. The mini CLIP the committed results come from ships with the package
(``model_weights/mini.pt``) beside its training record (``model_weights/mini.json``:
recipe, training curve, zero-shot accuracy, machine, and the file's sha256), so every
user and CI evaluates the same weights whatever CPU they have. A missing, truncated or
altered file is refused with the expected hash and the command that restores it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from .results import save_torch_atomic, write_json_atomic

#: Folder of the shipped weights (inside the package, found from this file).
WEIGHTS_DIR = Path(__file__).resolve().parent / "model_weights"
#: Project mini model names that ship trained weights -> file stem in :data:`WEIGHTS_DIR`.
SHIPPED = {"mini": "mini", "mini-rn": "mini"}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or altered (the message says how to restore it)."""


def sha256_file(path, *, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_torch_file(path, *, restore: str = "delete it and make it again") -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU; a truncated or corrupted file raises a
    :class:`CheckpointError` naming it and saying how to restore it (``restore``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is truncated or corrupted ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'}); {restore}") from err


def load_checkpoint(path, *, restore: str = "delete it and make it again") -> dict:
    """Load a state dict saved by this project (``weights_only=True``; accepts ``{"state_dict": ...}``);
    a corrupted file raises a :class:`CheckpointError` that names it and says how to restore it."""
    state = load_torch_file(path, restore=restore)
    return state.get("state_dict", state)


def save_checkpoint(state_dict: dict, path) -> Path:
    """Save a state dict atomically (``results.write_atomic``: temp file in the same folder, then rename)."""
    return save_torch_atomic(state_dict, path)


def shipped_paths(name: str = "mini") -> tuple[Path, Path]:
    """Return ``(weights, record)`` paths of the shipped model ``name`` (a key of :data:`SHIPPED`)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped weights for {name!r}; shipped: {', '.join(SHIPPED)}")
    stem = SHIPPED[name]
    return WEIGHTS_DIR / f"{stem}.pt", WEIGHTS_DIR / f"{stem}.json"


def _restore_hint(path: Path) -> str:
    return (f"restore it with `git checkout -- {path.relative_to(WEIGHTS_DIR.parents[2])}` (a fresh clone has it), "
            "or retrain a mini model here with `python -m clipunlearn models --train-mini` and use it with "
            "`./run_all.sh --retrained-mini 0` (its numbers then differ slightly from the committed results)")


def load_shipped_record(name: str = "mini") -> dict:
    """Return the training record of the shipped model ``name`` (``model_weights/<stem>.json``)."""
    weights, record = shipped_paths(name)
    if not record.is_file():
        raise CheckpointError(f"the shipped training record {record} is missing; {_restore_hint(record)}")
    try:
        return json.loads(record.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"the shipped training record {record} is corrupted ({err}); "
                              f"{_restore_hint(record)}") from err


def verify_shipped(name: str = "mini") -> tuple[Path, dict]:
    """Check the shipped weights of ``name`` against the sha256 of its record; return ``(path, record)``.

    Raises :class:`CheckpointError` naming the file, the expected hash and how to restore
    it when the file is missing, truncated or altered.
    """
    weights, _ = shipped_paths(name)
    info = load_shipped_record(name)
    expected = info.get("sha256")
    if not weights.is_file():
        raise CheckpointError(f"the shipped mini CLIP {weights} is missing (expected sha256 {expected}); "
                              f"{_restore_hint(weights)}")
    actual = sha256_file(weights)
    if actual != expected:
        size = weights.stat().st_size
        what = "truncated" if info.get("bytes") and size < info["bytes"] else "altered"
        raise CheckpointError(f"the shipped mini CLIP {weights} is {what}: sha256 {actual} ({size} bytes), expected "
                              f"{expected} ({info.get('bytes')} bytes); {_restore_hint(weights)}")
    return weights, info


def write_shipped(state_dict: dict, info: dict, name: str = "mini") -> tuple[Path, dict]:
    """Write ``state_dict`` as the shipped weights of ``name`` and its record with the file's sha256 and size.

    A maintainer's step (``python -m clipunlearn models --train-mini --ship``): the
    committed results must then be regenerated from the new weights.
    """
    weights, record = shipped_paths(name)
    save_checkpoint(state_dict, weights)
    info = {**info, "sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    write_json_atomic(record, info)
    return weights, info
