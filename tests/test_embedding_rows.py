"""Training only the token-embedding rows a run reads is the dense run, bit for bit (``embedding_rows``)."""

import copy

import pytest
import torch
from torch import nn

from clipunlearn.embedding_rows import TABLE, EmbeddingRows, can_train_rows, step_tokens
from clipunlearn.unlearning import unlearn

from .test_unlearning import class_prompts, loaders


def dense_and_rows(model, **kwargs):
    """The same run twice: the dense table (``embedding_rows=False``) and the rows; return both models."""
    out = []
    for rows in (False, True):
        m = copy.deepcopy(model)
        out.append((m, unlearn(m, embedding_rows=rows, progress=False, **kwargs)))
    return out


@pytest.mark.parametrize("method,kwargs", [("ft", {}), ("cliperase", {}), ("graddiff", {"class_texts": True}),
                                           ("neggrad_plus", {"class_texts": True})])
def test_a_run_with_rows_is_the_dense_run_bit_for_bit(tiny_clip, method, kwargs):
    tok = tiny_clip.tokenizer
    forget, retain = loaders(tok)
    kwargs = {k: class_prompts(tok) for k in kwargs}
    seen = []

    def evaluate(m):  # reads prompts no batch holds: their rows join between steps, untrained
        with torch.no_grad():
            seen.append(m.encode_text(tok(["a zebra.", "a giraffe."])).sum().item())
        return {"score": seen[-1]}

    (dense, dense_run), (rows, rows_run) = dense_and_rows(
        tiny_clip.model, method=method, forget_loader=forget, retain_loader=retain, max_steps=9, lr=1e-2,
        loss_kwargs=kwargs, eval_fn=evaluate, eval_every=4, select_fn=lambda e: e["score"])
    assert [h.get("loss") for h in dense_run.history] == [h.get("loss") for h in rows_run.history]
    a, b = dense.state_dict(), rows.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    moved = (a[TABLE] != tiny_clip.model.state_dict()[TABLE]).any(1)
    assert 0 < moved.sum() < 40  # the table did train, a few rows of 49,408
    assert seen[:3] == seen[3:6]  # every evaluation saw the same weights
    assert rows.token_embedding.weight.requires_grad and "forward" not in vars(rows.token_embedding)


def test_rows_that_join_between_steps_and_a_full_capacity_match_dense_adamw():
    torch.manual_seed(0)
    dense = nn.Embedding(50, 4)
    sparse = copy.deepcopy(dense)
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=0.1, weight_decay=0.0)
    rows = EmbeddingRows(sparse, capacity=2)
    with rows:
        opt_rows = torch.optim.AdamW([rows.rows], lr=0.1, weight_decay=0.0)
        rows.optimizer = opt_rows
        for step, ids in enumerate([[1, 2, 1], [2, 7, 9, 7], [30, 1, 44, 45, 46], [2, 2]]):
            ids = torch.tensor(ids)
            rows.include([ids])
            for emb, opt in ((dense, opt_dense), (sparse, opt_rows)):
                opt.zero_grad()
                (emb(ids) * torch.arange(1.0, 5.0)).square().sum().backward()
                opt.step()
            rows.write_back()
            assert torch.equal(dense.weight, sparse.weight), step
    assert len(rows.rows) == 8 and rows.ids.tolist() == [1, 2, 7, 9, 30, 44, 45, 46]
    assert opt_rows.state[rows.rows]["exp_avg"].shape == (8, 4)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[rows.ids] = False
    assert torch.equal(sparse.weight[untouched], copy.deepcopy(dense).weight[untouched])


def test_growing_after_the_step_used_the_rows_is_refused():
    emb = nn.Embedding(20, 3)
    rows = EmbeddingRows(emb, capacity=2)
    with rows:
        assert not emb.weight.requires_grad  # nothing reading the table inside makes a dense gradient
        emb(torch.tensor([1, 2])).sum()
        with pytest.raises(RuntimeError, match=r"read 1 token ids beyond the 2 embedding rows .* include\(\) a "
                                               r"step's token ids before its first forward pass"):
            emb(torch.tensor([3]))
        rows.write_back()  # a new step: the rows may grow again
        assert torch.equal(emb(torch.tensor([3, 4, 5])), emb.weight[[3, 4, 5]])
    assert emb.weight.requires_grad


def test_rows_grow_before_the_first_step_and_double():
    emb = nn.Embedding(30, 2)
    rows = EmbeddingRows(emb, capacity=1)
    with rows:
        rows.optimizer = torch.optim.AdamW([rows.rows], lr=0.1, weight_decay=0.0)  # no moments yet
        rows.include([torch.tensor([4, 5, 6])])  # more than the capacity, before any forward pass or step
        assert len(rows.rows) == 3 and rows.ids.tolist() == [4, 5, 6]
        rows.include([torch.tensor([7])])  # one more: the rows double instead of growing by one
        assert len(rows.rows) == 6 and torch.equal(rows.rows[:4], emb.weight[[4, 5, 6, 7]])


def test_only_a_dense_equivalent_run_trains_rows(tiny_clip):
    model = tiny_clip.model
    chosen = list(model.named_parameters())
    assert EmbeddingRows.for_run(model, chosen, weight_decay=0.0) is not None
    assert EmbeddingRows.for_run(model, chosen, weight_decay=0.1) is None  # decay moves every row
    assert EmbeddingRows.for_run(model, [c for c in chosen if c[0] != TABLE], weight_decay=0.0) is None
    assert not can_train_rows(nn.Embedding(5, 2, padding_idx=0), weight_decay=0.0)
    assert not can_train_rows(nn.Embedding(5, 2, max_norm=1.0), weight_decay=0.0)
    assert not can_train_rows(None, weight_decay=0.0)


def test_step_tokens_reads_batch_texts_and_integer_text_settings():
    texts, prompts = torch.tensor([[1, 2]]), torch.tensor([[3, 4]])
    found = step_tokens({"texts": texts, "labels": torch.tensor([70000])}, None,
                        loss_kwargs={"class_texts": prompts, "text_weight": torch.tensor([0.5]), "beta": 0.9})
    assert found == [texts, prompts]


def test_weight_decay_runs_the_dense_table(tiny_clip):
    forget, retain = loaders(tiny_clip.tokenizer)
    (dense, _), (rows, _) = dense_and_rows(tiny_clip.model, method="ft", forget_loader=forget, retain_loader=retain,
                                           max_steps=3, lr=1e-2, weight_decay=0.1)
    assert torch.equal(dense.token_embedding.weight, rows.token_embedding.weight)
    moved = (dense.token_embedding.weight != tiny_clip.model.token_embedding.weight).any(1)
    assert moved.all()  # decay moved every row: the reason rows are not used here
