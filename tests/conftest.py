"""Shared pytest fixtures: tiny randomly initialised CLIP models, data folders, seeding.

The tiny models are real ``open_clip.model.CLIP`` instances (ViT or ModifiedResNet
vision tower) on 32x32 images with a 16-token context, small enough that a forward
and backward pass take milliseconds on CPU. They are built fresh for every test, so
tests may modify their weights freely.
"""

from __future__ import annotations

import gc
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from open_clip.model import CLIP, set_model_preprocess_cfg
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import PreprocessCfg

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 0
IMAGE_SIZE = 32
CONTEXT_LENGTH = 16
EMBED_DIM = 32

TEXT_CFG = dict(context_length=CONTEXT_LENGTH, vocab_size=49408, width=32, heads=2, layers=2)
VIT_CFG = dict(image_size=IMAGE_SIZE, patch_size=8, width=32, head_width=16, layers=2)
RESNET_CFG = dict(image_size=IMAGE_SIZE, layers=(1, 1, 1, 1), width=8, head_width=64)


def pytest_configure(config):
    """Under pytest-xdist (``./run_tests.sh`` runs the unit tests on one worker per core) each worker takes one torch
    thread, so that the workers share the cores instead of each asking for all of them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_finish(session):
    """Freeze what exists after collection (modules, test functions) out of the garbage collector.

    The library calls ``gc.collect()`` after every run to free its models; with the whole suite
    imported, each call scans every object there is (0.3 s). Frozen objects are never freed, and
    objects the tests create are collected as before.
    """
    gc.collect()
    gc.freeze()


class TinyClip(NamedTuple):
    """A tiny CLIP and its tokenizer; unpacks as ``model, tokenizer = tiny_clip``."""

    model: CLIP
    tokenizer: SimpleTokenizer


def tiny_clip_config(vision_cfg: dict) -> dict:
    """Keyword arguments of ``open_clip.model.CLIP`` (an open_clip model-config dict)."""
    return {"embed_dim": EMBED_DIM, "vision_cfg": dict(vision_cfg), "text_cfg": dict(TEXT_CFG)}


def build_tiny_clip(vision_cfg: dict, tokenizer: SimpleTokenizer, seed: int = SEED) -> TinyClip:
    """Build a randomly initialised CLIP from config dicts (CPU, float32, eval mode)."""
    torch.manual_seed(seed)
    model = CLIP(**tiny_clip_config(vision_cfg))
    # what open_clip.create_model attaches: image_mean / image_std / preprocess_cfg
    set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=IMAGE_SIZE)))
    return TinyClip(model.eval(), tokenizer)


@pytest.fixture(autouse=True)
def seeded():
    """Seed torch, numpy and random before every test."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture
def device() -> torch.device:
    """Tests run on CPU."""
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer() -> SimpleTokenizer:
    """open_clip's BPE tokenizer with a 16-token context (callable: list[str] -> LongTensor [B, 16])."""
    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


@pytest.fixture
def tiny_clip(tiny_tokenizer) -> TinyClip:
    """Tiny CLIP with a 2-layer ViT (patch 8) on 32x32 images, embed_dim 32."""
    return build_tiny_clip(VIT_CFG, tiny_tokenizer)


@pytest.fixture
def tiny_resnet_clip(tiny_tokenizer) -> TinyClip:
    """Tiny CLIP with a ModifiedResNet (layers 1,1,1,1, width 8) on 32x32 images."""
    return build_tiny_clip(RESNET_CFG, tiny_tokenizer)


@pytest.fixture
def tiny_clip_configs() -> dict:
    """Model-config dicts of the tiny models: ``{"vit": ..., "resnet": ...}``."""
    return {"vit": tiny_clip_config(VIT_CFG), "resnet": tiny_clip_config(RESNET_CFG)}


@pytest.fixture
def tiny_batch(tiny_tokenizer) -> dict:
    """A batch as the unlearning losses take it (see docs/ARCHITECTURE.md), 4 samples, 2 classes."""
    classnames = ["t-shirt", "trouser"]
    labels = torch.tensor([0, 1, 0, 1])
    texts = tiny_tokenizer([f"a photo of a {classnames[i]}." for i in labels.tolist()])
    return {"images": torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE), "texts": texts, "labels": labels}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (present in CI); skips the test if missing."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder not found: {path}")
    return path
