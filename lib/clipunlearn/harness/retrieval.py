"""Image-text retrieval unlearning on a caption dataset (paper C's Flickr30K runs): the task, the one retrieval
evaluation and one run of a registered pair loss through the one loop.

The project's choices (paper C's are not public; ``docs/PAPERS.md``): the forget pairs are those of the images
any of whose captions mention a concept word (``data.split_by_concept``), the retain pairs those of the other
images. R@K on Df (Dr) is the recall of the forget (retain) images as image-to-text queries and of their
captions as text-to-image queries, all ranked against one pool of the split: its forget images and its
retain images (every one, or a fixed sample of ``eval_retain_images``), with every caption of each.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import data, metrics
from ..clip import copy_frozen, release_memory, resolve_precision
from ..registry import get_method
from ..results import make_record
from ..scores import CRITERION, selection_score
from ..unlearning import check_run_settings, make_caption_pair_loader, unlearn
from .select import EVALUATIONS

__all__ = ["RETRIEVAL_KS", "RETRIEVAL_TASK", "RetrievalPool", "RetrievalTask", "build_retrieval_pool",
           "build_retrieval_tasks", "evaluate_retrieval", "retrieval_score", "run_retrieval_method",
           "summarise_retrieval"]

#: The recalls reported: R@1, R@5, R@10.
RETRIEVAL_KS = (1, 5, 10)
#: ``record["task"]`` of the retrieval runs.
RETRIEVAL_TASK = "retrieval"


@dataclass
class RetrievalPool:
    """What one retrieval evaluation ranks: images (decoded once), every caption of each (tokenised once).

    ``image_ids``: the images' indices in their dataset (forget images first); ``caption_groups``: the pool
    position of each caption's image; ``is_forget``: which pool images (and so their captions) are Df queries.
    """

    images: torch.Tensor = field(repr=False)
    tokens: torch.Tensor = field(repr=False)
    image_ids: torch.Tensor
    caption_groups: torch.Tensor
    is_forget: torch.Tensor

    def sizes(self) -> dict[str, int]:
        """The number of forget and retain images and captions."""
        forget_captions = int(self.is_forget[self.caption_groups].sum())
        n_forget = int(self.is_forget.sum())
        return {"forget_images": n_forget, "retain_images": len(self.image_ids) - n_forget,
                "forget_captions": forget_captions, "retain_captions": len(self.caption_groups) - forget_captions}


def build_retrieval_pool(dataset, *, forget, retain, tokenizer, device="cpu", batch_size: int = 256) -> RetrievalPool:
    """Decode the ``forget`` and ``retain`` images of caption dataset ``dataset`` and tokenise all their captions.

    Images are kept on ``device`` (float16 on a GPU, float32 elsewhere), tokens on the CPU.
    """
    forget, retain = torch.as_tensor(forget, dtype=torch.long), torch.as_tensor(retain, dtype=torch.long)
    ids = torch.cat([forget, retain])
    if len(ids.unique()) != len(ids):
        raise ValueError("an image is both a forget and a retain image: the two sets must be disjoint")
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    images = torch.cat([dataset.get_batch(ids[i:i + batch_size])[0].to(device, dtype)
                        for i in range(0, len(ids), batch_size)])
    position = torch.full((len(dataset),), -1, dtype=torch.long)
    position[ids] = torch.arange(len(ids))
    captions = (position[dataset.caption_image_ids] >= 0).nonzero().flatten()
    tokens = tokenizer([dataset.captions[i] for i in captions.tolist()])
    return RetrievalPool(images, tokens, ids, position[dataset.caption_image_ids[captions]],
                         torch.arange(len(ids)) < len(forget))


@torch.no_grad()
def evaluate_retrieval(model, pool: RetrievalPool, *, ks: Sequence[int] = RETRIEVAL_KS, batch_size: int = 256,
                       device="cpu") -> dict[str, float]:
    """Return image-to-text and text-to-image R@k of ``model`` on Df and Dr of ``pool`` (the one retrieval
    evaluation).

    Keys ``forget_i2t_r{k}``, ``forget_t2i_r{k}``, ``retain_i2t_r{k}``, ``retain_t2i_r{k}`` and the mean of the
    two directions ``forget_r{k}`` / ``retain_r{k}`` (fractions). An image query is a hit when any of its own
    captions is among the ``k`` most similar captions of the pool; a caption query when its own image is among
    the ``k`` most similar images (``metrics.recall_from_similarity``).
    """
    model.eval()
    images = torch.cat([model.encode_image(pool.images[i:i + batch_size].to(device).float(), normalize=True).float()
                        for i in range(0, len(pool.images), batch_size)])
    texts = torch.cat([model.encode_text(pool.tokens[i:i + batch_size].to(device), normalize=True).float()
                       for i in range(0, len(pool.tokens), batch_size)])
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise metrics.NonFiniteOutputError("retrieval features are not finite (a diverged run?)")
    sims = (images @ texts.T).cpu()
    match = torch.arange(len(pool.image_ids)).view(-1, 1) == pool.caption_groups.view(1, -1)
    out: dict[str, float] = {}
    for name, chosen in (("forget", pool.is_forget), ("retain", ~pool.is_forget)):
        recall = metrics.recall_from_similarity(sims, match, ks=ks, image_rows=chosen.nonzero().flatten(),
                                                text_rows=chosen[pool.caption_groups].nonzero().flatten())
        out.update({f"{name}_{key}": value for key, value in recall.items()})
        out.update({f"{name}_r{k}": (recall[f"i2t_r{k}"] + recall[f"t2i_r{k}"]) / 2 for k in ks})
    return out


def retrieval_score(val: dict) -> float:
    """The one selection criterion (``scores.selection_score``, retain minus forget) on validation R@10: the
    mean of both directions, ``val_retain_r10 - val_forget_r10``."""
    return selection_score({"val_retain_acc": val["val_retain_r10"], "val_forget_acc": val["val_forget_r10"]})


@dataclass
class RetrievalTask:
    """Forget a concept's image-caption pairs: training images (forget / retain, indices into ``train``) and
    the validation and test pools (the same for every seed)."""

    concept: str
    seed: int
    train: object = field(repr=False)
    forget_train: torch.Tensor = field(repr=False)
    retain_train: torch.Tensor = field(repr=False)
    val: RetrievalPool = field(repr=False)
    test: RetrievalPool = field(repr=False)

    def sizes(self) -> dict[str, int]:
        """The number of training images and pairs, and of the pools' images and captions."""
        pairs = lambda idx: int(torch.isin(self.train.caption_image_ids, idx).sum())  # noqa: E731
        return {"forget_train": len(self.forget_train), "retain_train": len(self.retain_train),
                "forget_train_pairs": pairs(self.forget_train), "retain_train_pairs": pairs(self.retain_train),
                **{f"{name}_{k}": v for name, pool in (("val", self.val), ("test", self.test))
                   for k, v in pool.sizes().items()}}


def build_retrieval_tasks(train, val, test, *, concept: str, tokenizer, seeds: Sequence[int] = (0,),
                          max_forget_train: int | None = None, max_retain_train: int | None = None,
                          eval_retain_images: int | None = None, device="cpu") -> list[RetrievalTask]:
    """Return one :class:`RetrievalTask` of ``concept`` per seed of ``seeds`` on three splits of a caption dataset.

    Training: the forget and retain images of ``train`` (``data.split_by_concept``; ``max_forget_train`` /
    ``max_retain_train`` keep a sample drawn with the task's seed). Validation and test pools, shared by the
    tasks: every forget image of ``val`` / ``test`` and their retain images (a sample of ``eval_retain_images``
    drawn with seed 0; None: all). Every split needs forget and retain images.
    """
    pools = []
    for ds in (train, val, test):
        forget, retain = data.split_by_concept(ds, concept=concept, max_retain=eval_retain_images)
        if not len(forget) or not len(retain):
            side = "no caption mentions" if not len(forget) else "every image has a caption that mentions"
            raise ValueError(f"{getattr(ds, 'split', None)} split: {side} {concept!r}; choose a concept word that "
                             "the captions of some, not all, images of every split use (e.g. 'dog')")
        if ds is not train:
            pools.append(build_retrieval_pool(ds, forget=forget, retain=retain, tokenizer=tokenizer, device=device))
    return [RetrievalTask(concept, seed, train, *data.split_by_concept(
        train, concept=concept, max_forget=max_forget_train, max_retain=max_retain_train, seed=seed), *pools)
        for seed in seeds]


def summarise_retrieval(task: RetrievalTask, *, method: str, config: dict, test_metrics: dict,
                        cost: dict | None = None, val: dict | None = None, history: Sequence[dict] = ()) -> dict:
    """Return a result record of one retrieval run (``config`` gets the task fields; ``metrics`` the numbers)."""
    config = {"task": RETRIEVAL_TASK, "forget_class": task.concept, "concept": task.concept, "seed": task.seed,
              "criterion": CRITERION, **config}
    return make_record(method=method, task=RETRIEVAL_TASK, config=config,
                       metrics={**test_metrics, **(cost or {}), **(val or {})}, history=list(history))


def run_retrieval_method(method: str, task: RetrievalTask, *, model, tokenizer, lr: float, steps: int,
                         batch_size: int = 16, evaluations: int = EVALUATIONS, loss_kwargs: dict | None = None,
                         device="cpu", precision: str = "fp32", logit_scale: str = "clamped",
                         config: dict | None = None, progress: bool = False):
    """Unlearn a fresh copy of ``model`` on ``task``'s caption pairs with registered pair loss ``method``;
    return ``(model, record)``.

    ``steps`` steps of ``batch_size`` forget and ``batch_size`` retain pairs (``unlearning.unlearn``: Adam,
    no weight decay), the validation pool scored ``evaluations`` times; the best step by
    :func:`retrieval_score` is kept and tested (:func:`evaluate_retrieval`). The record holds the test
    recalls, the validation recalls at the kept step, the wall time, the rise of peak memory and the
    validation history; a run stopped by a non-finite loss has ``metrics.failed = True``.
    """
    check_run_settings(lr=lr, steps=steps, batch_size=batch_size, eval_every=evaluations)
    precision = resolve_precision(precision, device)  # "auto": what this device runs well, recorded as such
    if get_method(method).needs_class_texts:
        raise ValueError(f"{method!r} classifies over class prompts, which caption pairs do not have; run a pair "
                         "loss (e.g. 'cliperase' or 'ft')")
    release_memory()
    eval_every = max(1, steps // evaluations)
    val_cost = {"val_passes": 0, "val_seconds": 0.0}

    def validate(m):
        start = time.perf_counter()
        out = {f"val_{k}": v for k, v in evaluate_retrieval(m, task.val, device=device).items()}
        val_cost["val_passes"] += 1
        val_cost["val_seconds"] += time.perf_counter() - start
        return out

    def pairs(images, shift):
        return make_caption_pair_loader(task.train, tokenizer=tokenizer, images=images, batch_size=batch_size,
                                        seed=task.seed * 7 + shift, device=device)

    unlearned, original = copy.deepcopy(model), copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        run = unlearn(unlearned, method=method, forget_loader=pairs(task.forget_train, 0),
                      retain_loader=pairs(task.retain_train, 1), original=original, max_steps=steps, lr=lr,
                      loss_kwargs=dict(loss_kwargs or {}), eval_fn=validate, eval_every=eval_every,
                      select_fn=retrieval_score, device=device, precision=precision, seed=task.seed,
                      progress=progress, logit_scale=logit_scale)
    del original
    evals = run.evals
    best = next((e for e in evals if e["step"] == run.best_step), evals[-1] if evals else {})
    failed, stopped = run.failed, run.stopped_early
    try:
        test = evaluate_retrieval(unlearned, task.test, device=device)
    except metrics.NonFiniteOutputError as err:  # recorded as failed, the notebook goes on
        test, failed, stopped = {}, True, f"non-finite outputs: {err}"
    record = summarise_retrieval(
        task, method=method, cost=cost, test_metrics=test,
        val={k: v for k, v in best.items() if k.startswith("val_") and k.endswith("_r10")},
        config={"lr": lr, "steps": steps, "batch_size": batch_size, "eval_every": eval_every, "optimizer": "Adam",
                **dict(loss_kwargs or {}), **({"precision": precision} if precision != "fp32" else {}),
                "logit_scale": logit_scale, **(config or {})},
        history=[{"step": e["step"], **{k: v for k, v in e.items() if k.endswith("_r10")}} for e in evals])
    record["metrics"].update(steps=run.steps, best_step=run.best_step, stopped_early=stopped, failed=failed,
                             score=retrieval_score(best) if "val_retain_r10" in best else None, **val_cost)
    return unlearned, record
