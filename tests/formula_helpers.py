"""Helpers of the formula tests (tests/test_formulas_*.py): toy models and naive reference formulas.

Every reference here is written with plain Python loops over floats (``math``), never with the
library's tensor code, so a test compares the library with an independent computation.
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

TOL = 1e-6


# --------------------------------------------------------------------------- #
# Toy models
# --------------------------------------------------------------------------- #
class FeatureModel(nn.Module):
    """A CLIP-shaped toy: ``encode_image(x) = flatten(x) @ Wi``, ``encode_text(t) = t @ Wt``.

    Images are any float tensor ``[B, ...]`` (flattened to ``[B, Di]``), texts are float
    features ``[B, Dt]``; ``logit_scale`` is stored as a log, as in CLIP. ``visual`` carries the
    pixel normalisation ``losses.lipschitz_bounds`` reads.
    """

    def __init__(self, wi: torch.Tensor, wt: torch.Tensor, scale: float = 2.0,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.wi = nn.Parameter(wi.clone().float())
        self.wt = nn.Parameter(wt.clone().float())
        self.logit_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.visual = types.SimpleNamespace(preprocess_cfg={"mean": tuple(mean), "std": tuple(std)})

    def encode_image(self, images, normalize: bool = False):
        f = images.flatten(1).float() @ self.wi
        return f / f.norm(dim=-1, keepdim=True) if normalize else f

    def encode_text(self, texts, normalize: bool = False):
        f = texts.float() @ self.wt
        return f / f.norm(dim=-1, keepdim=True) if normalize else f


def feature_model(seed: int, di: int = 3, dt: int = 3, d: int = 3, scale: float = 2.0, **kw) -> FeatureModel:
    g = torch.Generator().manual_seed(seed)
    return FeatureModel(torch.randn(di, d, generator=g), torch.randn(dt, d, generator=g), scale=scale, **kw)


def batch(seed: int, labels, di: int = 3, dt: int = 3) -> dict:
    """A batch of the toy model: random image and text features with ``labels``."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    return {"images": torch.randn(n, di, generator=g), "texts": torch.randn(n, dt, generator=g),
            "labels": torch.tensor(labels)}


class ListDataset:
    """In-memory labelled dataset (``get_batch``, ``targets``, ``classnames``, optional ``image_ids``)."""

    def __init__(self, images, targets, classnames, image_ids=None):
        self.images = images
        self.targets = torch.as_tensor(targets)
        self.classnames = list(classnames)
        if image_ids is not None:
            self.image_ids = torch.as_tensor(image_ids)

    def __len__(self):
        return len(self.targets)

    def get_batch(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.images[idx], self.targets[idx]

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


# --------------------------------------------------------------------------- #
# Naive formulas (Python floats)
# --------------------------------------------------------------------------- #
def rows(t) -> list:
    return t.detach().double().tolist()


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a) -> float:
    return math.sqrt(sum(x * x for x in a))


def cosine(a, b) -> float:
    return dot(a, b) / (norm(a) * norm(b))


def matvec_rows(x_rows, w_rows):
    """``x @ W`` for lists: ``x_rows [N][Di]``, ``w_rows [Di][D]``."""
    d = len(w_rows[0])
    return [[sum(x[k] * w_rows[k][j] for k in range(len(x))) for j in range(d)] for x in x_rows]


def log_softmax(row) -> list:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def softmax(row) -> list:
    return [math.exp(v) for v in log_softmax(row)]


def cross_entropy(row, target: int) -> float:
    return -log_softmax(row)[target]


def kl(p, q) -> float:
    """KL(p || q) of two probability lists."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def transpose(m):
    return [list(c) for c in zip(*m)]


def features(model: FeatureModel, b: dict):
    """Naive ``(image features, text features)`` (lists, unnormalised) of the toy model."""
    img = matvec_rows(rows(b["images"].flatten(1)), rows(model.wi))
    txt = matvec_rows(rows(b["texts"]), rows(model.wt))
    return img, txt


def unit(v):
    n = norm(v)
    return [x / n for x in v]


def logits_of(model: FeatureModel, b: dict):
    img, txt = features(model, b)
    s = math.exp(model.logit_scale.item())
    return [[s * cosine(i, t) for t in txt] for i in img]


def soft_target_ce(logit_rows, pos_rows) -> float:
    """Mean over rows with a positive of ``-sum_j pos_ij / n_i * log_softmax(row_i)_j``."""
    total, count = 0.0, 0
    for row, pos in zip(logit_rows, pos_rows):
        n = sum(pos)
        if n == 0:
            continue
        ls = log_softmax(row)
        total += -sum(p / n * l for p, l in zip(pos, ls))
        count += 1
    return total / count


def label_aware_contrastive(logit_rows, labels):
    """``(i2t, t2i)`` of the label-aware (multi-positive) CLIP loss, by loops."""
    pos = [[1.0 if a == b else 0.0 for b in labels] for a in labels]
    return soft_target_ce(logit_rows, pos), soft_target_ce(transpose(logit_rows), transpose(pos))


def auc_pairs(pos, neg) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) over all pairs."""
    s = 0.0
    for p in pos:
        for n in neg:
            s += 1.0 if p > n else 0.5 if p == n else 0.0
    return s / (len(pos) * len(neg))
