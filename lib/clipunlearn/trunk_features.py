"""A ResNet image tower's trunk features, kept while the trunk's weights stay the same.

An evaluation encodes the same test and validation images again and again, and most of a ResNet tower's cost is its
convolutional trunk (the stem and the four stages) before the attention pool. Many models evaluated share a trunk:
paper B's selective forgetting trains only the attention pool and the text tower (its code freezes every convolution
and BatchNorm), the nullspace projection and the text-side methods leave the image tower alone, and the untouched
model is evaluated once per run. :class:`TrunkFeatures` keeps the trunk's output for each batch of a dataset, for a
few trunk states (checked tensor by tensor with ``torch.equal`` at every call), and runs only the attention pool on a
hit: the same operations on the same inputs as ``model.encode_image``, so the features are the same bit for bit
(``tests/test_trunk_features.py``). Other towers (a ViT, a ResNet in training mode or of another class) are encoded
as before.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet

__all__ = ["TRUNK_CACHE_BYTES", "TrunkFeatures"]

#: The most bytes of trunk features held (the mini CLIP's trunk gives 2 KiB per image; a 224-pixel RN50's 392 KiB).
TRUNK_CACHE_BYTES = 256 * 2**20


class TrunkFeatures:
    """Trunk outputs by trunk state, dataset and batch indices, at most ``max_bytes`` of them and ``states`` trunk
    states (the oldest state's features are dropped first)."""

    def __init__(self, *, max_bytes: int = TRUNK_CACHE_BYTES, states: int = 4):
        self.max_bytes, self.states = max_bytes, states
        self.entries: list[dict] = []  # {"trunk": [tensors], "features": {key: tensor}, "bytes": int}, newest last
        self.hits = self.misses = 0
        self.lock = threading.Lock()  # a concurrent executor's threads share it

    @staticmethod
    def applies(model) -> bool:
        """True for an open_clip ModifiedResNet tower (this exact class: a subclass may compute otherwise) in eval
        mode, the one tower whose forward is trunk then attention pool."""
        visual = getattr(model, "visual", None)
        return type(visual) is ModifiedResNet and not visual.training

    @staticmethod
    def _trunk(visual) -> list[torch.Tensor]:
        return [t for name, t in itertools.chain(visual.named_parameters(), visual.named_buffers())
                if not name.startswith("attnpool.")]

    def _state_of(self, visual) -> dict:
        trunk = self._trunk(visual)
        for i, entry in enumerate(self.entries):
            if len(entry["trunk"]) == len(trunk) and all(
                    a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
                    for a, b in zip(entry["trunk"], trunk)):
                self.entries.append(self.entries.pop(i))  # most recently used last
                return entry
        entry = {"trunk": [t.detach().clone() for t in trunk], "features": {}, "bytes": 0}
        self.entries.append(entry)
        while len(self.entries) > self.states:
            self.entries.pop(0)
        return entry

    @torch.no_grad()
    def encode_image(self, model, images: torch.Tensor, *, dataset, indices: torch.Tensor,
                     normalize: bool = True) -> torch.Tensor:
        """``model.encode_image(images, normalize=normalize)`` for the batch ``images`` of ``dataset[indices]``,
        its trunk output read from the cache where this trunk state has encoded that batch before."""
        if not self.applies(model):
            return model.encode_image(images, normalize=normalize)
        visual = model.visual
        kind = images.device.type
        autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind) if kind in ("cpu", "cuda")
                    else None)
        digest = hashlib.sha1(torch.as_tensor(indices).cpu().contiguous().numpy().tobytes()).hexdigest()
        key = (id(dataset), digest, tuple(images.shape), images.dtype, str(images.device), autocast)
        with self.lock:
            entry = self._state_of(visual)
            found = entry["features"].get(key)
            x = found[1] if found is not None and found[0]() is dataset else None
            self.hits += x is not None
            self.misses += x is None
        if x is None:
            x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
            self._keep(entry, key, dataset, x)
        features = visual.attnpool(x)
        return F.normalize(features, dim=-1) if normalize else features

    def _keep(self, entry: dict, key: tuple, dataset, x: torch.Tensor) -> None:
        size = x.numel() * x.element_size()
        with self.lock:
            stale = entry["features"].pop(key, None)  # a dataset since freed whose id was reused
            if stale is not None:
                entry["bytes"] -= stale[1].numel() * stale[1].element_size()
            if sum(e["bytes"] for e in self.entries) + size > self.max_bytes:
                return
            try:
                entry["features"][key] = (weakref.ref(dataset), x)
            except TypeError:  # a dataset without weak references: not kept
                return
            entry["bytes"] += size
