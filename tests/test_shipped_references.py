"""The benchmark's retrained references ship with the package (checkpoints.REFERENCES_DIR) and load without the
cache, the same bits on every machine; a damaged file is refused with the way to restore it."""

from __future__ import annotations

import shutil

import pytest
import torch

from clipunlearn import checkpoints, models

#: The benchmark's three exclusions (methods.retrain.retrain_exclusion of RETRAIN_TARGETS), written out by hand.
EXCLUSIONS = {"sneaker": {"sneaker": ["photo"]}, "sandal": {"sandal": ["photo"]},
              "sketch:sneaker": {"sneaker": ["sketch"]}}


def key_of(exclude: dict) -> str:
    return models._mini_key("mini", {**models.MINI_TRAINING, "exclude": exclude})


@pytest.mark.parametrize("target", list(EXCLUSIONS))
def test_each_benchmark_reference_ships_and_loads_without_the_cache(target, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPUNLEARN_CACHE", str(tmp_path))  # an empty cache: nothing can come from there
    monkeypatch.delenv("CLIPUNLEARN_MINI_SEED", raising=False)
    model, _, _, info = models.get_mini_clip(exclude=EXCLUSIONS[target], progress=False)
    assert info["source"] == "shipped" and info["config"]["exclude"] == EXCLUSIONS[target]
    assert checkpoints.fingerprint_state(model.state_dict()) == info["fingerprint"]
    assert info["path"].endswith(f"references/{key_of(EXCLUSIONS[target])}/delta.pt")
    assert not (tmp_path / "models").exists()
    base, _, _, _ = models.get_mini_clip(progress=False)
    changed = [n for n, t in model.state_dict().items() if not torch.equal(t, base.state_dict()[n])]
    assert "token_embedding.weight" in changed and len(changed) > 10  # trained from scratch, not the base


def test_another_training_seed_is_not_the_shipped_reference():
    assert checkpoints.shipped_reference(key_of(EXCLUSIONS["sneaker"])) is not None
    other = models._mini_key("mini", {**models.MINI_TRAINING, "exclude": EXCLUSIONS["sneaker"], "seed": 1})
    assert checkpoints.shipped_reference(other) is None


def test_a_damaged_reference_is_refused_with_the_way_to_restore_it(tmp_path, monkeypatch):
    key = key_of(EXCLUSIONS["sandal"])
    shutil.copytree(checkpoints.REFERENCES_DIR / key, tmp_path / key)
    monkeypatch.setattr(checkpoints, "REFERENCES_DIR", tmp_path)
    base = checkpoints.load_checkpoint(checkpoints.verify_shipped("mini")[0])
    state, info = checkpoints.load_shipped_reference(key, base)
    assert checkpoints.fingerprint_state(state) == info["fingerprint"]
    with pytest.raises(checkpoints.CheckpointError, match="made from another mini CLIP"):
        checkpoints.load_shipped_reference(key, {**base, "logit_scale": base["logit_scale"] + 1})
    delta = tmp_path / key / "delta.pt"
    blob = delta.read_bytes()
    delta.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(checkpoints.CheckpointError, match=r"is altered: sha256 .*git checkout -- .*delete the folder"):
        checkpoints.load_shipped_reference(key, base)
    delta.write_bytes(blob[:-10])
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"is truncated: sha256 .*git checkout -- .*delete the folder"):
        checkpoints.load_shipped_reference(key, base)
    delta.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="is missing"):
        checkpoints.load_shipped_reference(key, base)
    (tmp_path / key / "info.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="record .* is corrupted"):
        checkpoints.load_shipped_reference(key, base)


def test_the_written_reference_rebuilds_the_model_it_was_written_from(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "REFERENCES_DIR", tmp_path)
    base = {"emb": torch.zeros(6, 2), "w": torch.ones(3)}
    state = {"emb": torch.zeros(6, 2), "w": torch.tensor([1.0, 2.0, 1.0])}
    state["emb"][4] = 7.0
    delta = checkpoints.write_shipped_reference("k", state, {"note": "x"}, base)
    saved = checkpoints.load_torch_file(delta)
    assert set(saved["full"]) == {"w"} and saved["rows"]["emb"][0].tolist() == [4]
    back, info = checkpoints.load_shipped_reference("k", lambda: base)
    assert info["note"] == "x" and all(torch.equal(back[k], state[k]) for k in state)
