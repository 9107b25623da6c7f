"""Train only the rows of a token embedding that the forward passes read: the dense run's AdamW steps, bit for bit.

A CLIP text tower's token embedding is most of its weights (49,408 x width: 6.3 M of the mini CLIP's 8.1 M), and a
batch of captions reads a few dozen of its rows. Trained as one dense tensor, every step fills a zero gradient the
size of the whole table and AdamW steps every row: 15-19% of an unlearning step of the mini CLIP on a 2-core CPU
(``benchmarks/bench_embedding_rows.py``). Without weight decay a row that never had a gradient has zero Adam
moments, so its AdamW step is exactly zero: only the rows read so far can change.

:class:`EmbeddingRows` hands the optimiser a small parameter holding those rows instead of the table. Forward passes
read the rows through it (the embedding's forward is swapped for a lookup into it, growing it as new tokens appear;
a new row's moments start at zero, as the dense row's are), and :meth:`EmbeddingRows.write_back` copies them into the
table after every step, so the model, its state dict and every evaluation see the dense run's weights. On a CPU the
per-row gradient sums run in the same order as the dense backward's (position by position), so the run is the dense
run bit for bit (``tests/test_embedding_rows.py``).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingRows", "TABLE", "can_train_rows", "step_tokens"]

#: The token embedding's table in an open_clip CLIP's ``named_parameters``.
TABLE = "token_embedding.weight"


def can_train_rows(embedding, *, weight_decay: float) -> bool:
    """True when :class:`EmbeddingRows` trains ``embedding`` exactly as the dense table: a plain ``nn.Embedding``
    (no padding index, max norm or sparse gradient) and no weight decay (decay moves every row)."""
    return (type(embedding) is nn.Embedding and weight_decay == 0 and embedding.padding_idx is None
            and embedding.max_norm is None and not embedding.sparse and not embedding.scale_grad_by_freq)


def step_tokens(*batches, loss_kwargs: dict | None = None) -> list[torch.Tensor]:
    """The token ids a step's loss can read: the ``texts`` of its batches and the loss settings' text tensors."""
    found = [b["texts"] for b in batches if isinstance(b, dict) and torch.is_tensor(b.get("texts"))]
    return found + [v for k, v in (loss_kwargs or {}).items() if "text" in k and torch.is_tensor(v)
                    and not v.is_floating_point()]


class EmbeddingRows:
    """Context: inside it ``embedding``'s table is frozen and :attr:`rows` (give it to the optimiser instead of the
    table) holds, slot by slot, the rows forward passes have read.

    ``capacity``: slots allocated at first (more are added between steps, doubling). ``optimizer``: set it once
    the optimiser exists, so that a growth extends its moments with zeros. Call :meth:`include` with the token ids
    a step will read before its first forward pass (a growth during a step, after a forward pass used the rows,
    would change the shape of a tensor in the autograd graph), and :meth:`write_back` after every optimiser step.
    """

    def __init__(self, embedding: nn.Embedding, *, capacity: int = 256):
        self.embedding, self.table = embedding, embedding.weight
        self.slots = torch.full((self.table.shape[0],), -1, dtype=torch.long, device=self.table.device)
        self.ids = torch.empty(0, dtype=torch.long, device=self.table.device)
        self.rows = nn.Parameter(self.table.detach().new_zeros(max(int(capacity), 1), self.table.shape[1]))
        self.optimizer, self.in_step = None, False

    @classmethod
    def for_run(cls, model, chosen: list, *, weight_decay: float) -> "EmbeddingRows | None":
        """An instance for a run training ``chosen`` (``(name, parameter)`` pairs) of ``model``, or None where it
        would not be the dense run (no :data:`TABLE` among them, or :func:`can_train_rows` says no)."""
        embedding = getattr(model, "token_embedding", None)
        if TABLE not in dict(chosen) or not can_train_rows(embedding, weight_decay=weight_decay):
            return None
        return cls(embedding)

    def parameters(self, chosen: list) -> list[torch.Tensor]:
        """``chosen``'s parameters with :attr:`rows` in place of the table: what the optimiser steps."""
        return [self.rows if name == TABLE else p for name, p in chosen]

    def __enter__(self):
        self.flag = self.table.requires_grad
        self.table.requires_grad_(False)
        self.embedding.forward = self.forward  # an instance attribute: nn.Module calls it instead of the class's
        return self

    def __exit__(self, *exc):
        del self.embedding.forward
        self.table.requires_grad_(self.flag)

    def include(self, tokens: Iterable[torch.Tensor]) -> None:
        """Give a slot to every token id of ``tokens`` (integer tensors) that has none, its row copied from the
        table; between steps a full :attr:`rows` doubles first, during one a RuntimeError says why it cannot."""
        new = [t.reshape(-1) for t in tokens]
        if not new:
            return
        ids = torch.cat(new).to(self.slots.device)
        ids = ids[self.slots[ids] < 0].unique()  # sorted: slots follow the token order
        if not len(ids):
            return
        start, end = len(self.ids), len(self.ids) + len(ids)
        if end > len(self.rows):
            self._grow(end)
        with torch.no_grad():
            self.rows[start:end] = self.table[ids]
        self.slots[ids] = torch.arange(start, end, device=self.slots.device)
        self.ids = torch.cat([self.ids, ids])

    def _grow(self, needed: int) -> None:
        if self.in_step:
            raise RuntimeError(f"a forward pass read {needed - len(self.rows)} token ids beyond the "
                               f"{len(self.rows)} embedding rows after this step's gradient graph used them; "
                               "include() a step's token ids before its first forward pass, or pass a larger capacity")
        size = max(needed, 2 * len(self.rows))
        extra = size - len(self.rows)
        self.rows.data = torch.cat([self.rows.data, self.rows.data.new_zeros(extra, self.rows.shape[1])])
        state = self.optimizer.state.get(self.rows, {}) if self.optimizer is not None else {}
        for key, value in state.items():  # Adam's moments: zero, as a row's that never had a gradient
            if torch.is_tensor(value) and value.shape == (size - extra, self.rows.shape[1]):
                state[key] = torch.cat([value, value.new_zeros(extra, value.shape[1])])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The embedding's forward inside the context: the rows of ``tokens``, read through :attr:`rows`."""
        self.include([tokens])
        self.in_step = self.in_step or torch.is_grad_enabled()
        return F.embedding(self.slots[tokens], self.rows)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained rows into the table (after every optimiser step); a new step may grow the rows again."""
        if len(self.ids):
            self.table.index_copy_(0, self.ids, self.rows[:len(self.ids)])
        self.in_step = False
