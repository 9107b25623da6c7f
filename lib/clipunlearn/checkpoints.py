"""Checkpoints: saving and loading state dicts, and the shipped mini CLIP with its hash.

Every checkpoint is loaded with ``torch.load(..., weights_only=True)`` and written
atomically. The mini CLIP the committed results come from ships with the package
(``model_weights/mini.pt``) beside its training record (``model_weights/mini.json``:
recipe, training curve, zero-shot accuracy, machine, and the file's sha256), so every
user and CI evaluates the same weights whatever CPU they have. A missing, truncated or
altered file is refused with the expected hash and the command that restores it.

The retrained gold standards of the benchmark's tasks (the mini CLIP trained with the same recipe without a
task's forget images) ship the same way, for the same reason, as their difference from the shipped model
(:func:`diff_state`: the tensors that differ, and of the token embedding only the rows the captions use):
``model_weights/references/<cache key>/delta.pt`` and ``info.json``, about 7 MB each instead of 32.
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
#: Folder of the shipped retrained references, one folder per model cache key (``models._mini_key``).
REFERENCES_DIR = WEIGHTS_DIR / "references"


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


def _in_repo(path: Path) -> str:
    """``path`` relative to the repository root (absolute when the package is installed elsewhere)."""
    try:
        return str(path.resolve().relative_to(WEIGHTS_DIR.parents[2]))
    except ValueError:
        return str(path)


def _restore_hint(path: Path) -> str:
    return (f"restore it with `git checkout -- {_in_repo(path)}` (a fresh clone has it), "
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
    check_shipped_file(weights, info, what="the shipped mini CLIP", hint=_restore_hint(weights))
    return weights, info


def check_shipped_file(path: Path, info: dict, *, what: str, hint: str) -> None:
    """Raise a :class:`CheckpointError` naming ``path`` (``what``), its state (missing, truncated or altered),
    the hashes and ``hint`` (how to restore it) unless its sha256 is the record ``info``'s."""
    expected = info.get("sha256")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing (expected sha256 {expected}); {hint}")
    actual = sha256_file(path)
    if actual != expected:
        size = path.stat().st_size
        state = "truncated" if info.get("bytes") and size < info["bytes"] else "altered"
        raise CheckpointError(f"{what} {path} is {state}: sha256 {actual} ({size} bytes), expected {expected} "
                              f"({info.get('bytes')} bytes); {hint}")


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


# --------------------------------------------------------------------------- #
# A state dict as its difference from another (the shipped references, the archive of reported runs)
# --------------------------------------------------------------------------- #
def fingerprint_state(state: dict) -> str:
    """Return the sha256 (16 hex) of a state dict's names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def diff_state(state: dict, base: dict) -> dict:
    """Return what ``state`` changed from ``base``: ``{"full": {name: tensor}, "rows": {name: (indices,
    rows)}}``; a tensor equal to the base's is left out, a matrix with fewer than half its rows changed keeps
    those rows. ``state`` must have ``base``'s names."""
    if set(state) != set(base):
        raise ValueError(f"the state's tensors are not the base's: {sorted(set(state) ^ set(base))[:5]}")
    full, rows = {}, {}
    for name, t in state.items():
        b = base[name]
        t = t.detach()
        if t.shape != b.shape or t.dtype != b.dtype:
            full[name] = t.cpu().clone()
        elif not torch.equal(t, b):
            changed = (t != b).flatten(1).any(1).nonzero().flatten() if t.ndim >= 2 else None
            if changed is not None and 2 * len(changed) < len(t):
                rows[name] = (changed.cpu(), t[changed].cpu().clone())
            else:
                full[name] = t.cpu().clone()
    return {"full": full, "rows": rows}


def apply_state_delta(base: dict, delta: dict) -> dict:
    """Return the state dict ``base`` with ``delta`` (:func:`diff_state`) applied; ``base`` is not changed."""
    out = dict(base)
    for name, t in delta["full"].items():
        out[name] = t
    for name, (idx, values) in delta["rows"].items():
        patched = base[name].detach().cpu().clone()
        patched[idx] = values
        out[name] = patched
    return out


def shipped_reference(key: str) -> tuple[Path, dict] | None:
    """Return ``(delta file, record)`` of the shipped retrained model with cache key ``key`` after checking the
    file against the record's sha256, or None when none ships under that key. A missing, truncated or altered
    file raises a :class:`CheckpointError` saying how to restore it."""
    folder = REFERENCES_DIR / key
    record = folder / "info.json"
    if not record.is_file():
        return None
    delta = folder / "delta.pt"
    hint = (f"restore it with `git checkout -- {_in_repo(folder)}`, or delete the "
            "folder and the reference is trained here on first use (its numbers then differ slightly)")
    try:
        info = json.loads(record.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"the shipped reference record {record} is corrupted ({err}); {hint}") from err
    check_shipped_file(delta, info, what="the shipped reference", hint=hint)
    return delta, info


def load_shipped_reference(key: str, base_state) -> tuple[dict, dict] | None:
    """Return ``(state dict, record)`` of the shipped retrained model ``key`` (its delta applied to
    ``base_state``, the shipped mini CLIP's, or a function returning it, called only when one ships), or None
    when none ships; a base other than the one the delta was made from raises a :class:`CheckpointError`."""
    found = shipped_reference(key)
    if found is None:
        return None
    delta, info = found
    base_state = base_state() if callable(base_state) else base_state
    if fingerprint_state(base_state) != info.get("base_fingerprint"):
        raise CheckpointError(f"the shipped reference {delta} was made from another mini CLIP than the shipped one; "
                              "rewrite it with `python scripts/ship_references.py` (after retraining the references)")
    state = apply_state_delta(base_state, load_torch_file(delta))
    if fingerprint_state(state) != info.get("fingerprint"):
        raise CheckpointError(f"the shipped reference {delta} does not rebuild the recorded model; rewrite it with "
                              "`python scripts/ship_references.py`")
    return state, info


def write_shipped_reference(key: str, state: dict, info: dict, base_state: dict) -> Path:
    """Write the retrained model ``state`` (cache key ``key``, training record ``info``) as a shipped reference:
    its delta from ``base_state`` and a record with the delta's sha256 and both fingerprints. A maintainer's step
    (``scripts/ship_references.py``)."""
    folder = REFERENCES_DIR / key
    delta = save_torch_atomic(diff_state(state, base_state), folder / "delta.pt")
    write_json_atomic(folder / "info.json", {**info, "sha256": sha256_file(delta), "bytes": delta.stat().st_size,
                                             "base_fingerprint": fingerprint_state(base_state),
                                             "fingerprint": fingerprint_state(state)})
    return delta

