"""The shared evaluation harness: small functions that return numbers or dicts.

Zero-shot accuracy on any index subset, per-class accuracy, confusion matrices, image-text retrieval recall@k, a
membership-inference score and the wall time / peak memory of a run. Every paper notebook evaluates through these.

GPU paths: :func:`autocast` (bf16 or fp16 autocast as an option, features come back float32),
``image_cache.CachedImages`` (preprocessed images of a folder dataset decoded once, by DataLoader workers into pinned
memory, then served from memory), batches moved with ``non_blocking`` copies, and
``build_classifier(..., cache=True)`` (class text features reused while the text tower is unchanged).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from typing import Iterator, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .clip import PRECISIONS, autocast, encoder_of  # noqa: F401 (PRECISIONS, autocast re-exported)
from .trunk_features import TrunkFeatures

#: Decimals every selection score is rounded to before comparing candidates (learning rates, steps,
#: souping alphas): differences below 1e-4 are float noise of one CPU's summation order (a tie of
#: two equal accuracies once differed by 3e-8), and a choice must not depend on them. Ties then go
#: to the first candidate in the grid's order (grids list the gentlest value first: the smaller
#: learning rate), then to the earlier step.
SCORE_DECIMALS = 4
#: The trunk features every evaluation shares (:func:`encode_images`).
TRUNKS = TrunkFeatures()


def round_score(value: float) -> float:
    """Return ``value`` rounded to :data:`SCORE_DECIMALS` decimals (what selection compares)."""
    return round(float(value), SCORE_DECIMALS)


# --------------------------------------------------------------------------- #
# Encoding
# --------------------------------------------------------------------------- #
def iterate_batches(dataset, *, indices=None, batch_size: int = 512, num_workers: int = 0,
                    pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches of ``dataset`` in order (``indices`` subset if given).

    In-memory datasets (with ``get_batch``) are sliced; others go through a DataLoader with ``num_workers`` worker
    processes and ``pin_memory`` (page-locked batches for asynchronous copies to a GPU).
    """
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    if hasattr(dataset, "get_batch"):  # in-memory datasets: slice tensors, no per-item Python
        for start in range(0, len(idx), batch_size):
            yield dataset.get_batch(idx[start:start + batch_size])
        return
    loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=False)
    for images, labels in loader:
        yield images, torch.as_tensor(labels)


@torch.no_grad()
def encode_images(model, dataset, *, indices=None, batch_size: int = 512, device="cpu",
                  normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(features [N, D], labels [N])`` of ``dataset`` (``indices`` subset if given), on CPU.

    Batches are copied to ``device`` with ``non_blocking`` (asynchronous from pinned memory) and cast to float32;
    features are gathered on the device and copied back once. Runs under a caller's :func:`autocast` (features come
    back float32). A ResNet tower's trunk output is kept across calls while its trunk is unchanged
    (:data:`TRUNKS`, ``trunk_features.TrunkFeatures``: the same features bit for bit).
    """
    feats, labels = [], []
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    for start, (images, y) in zip(range(0, len(idx), batch_size),
                                  iterate_batches(dataset, indices=idx, batch_size=batch_size)):
        images = images.to(device, non_blocking=True)
        if images.dtype != torch.float32:
            images = images.float()
        feats.append(TRUNKS.encode_image(model, images, dataset=dataset, indices=idx[start:start + batch_size],
                                         normalize=normalize).float())
        labels.append(y)
    dim = getattr(getattr(model, "visual", None), "output_dim", 0)
    if not feats:
        return torch.empty(0, dim), torch.empty(0, dtype=torch.long)
    return torch.cat(feats).cpu(), torch.cat(labels)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 256, device="cpu",
                 normalize: bool = True) -> torch.Tensor:
    """Return text features ``[len(texts), D]`` on CPU."""
    out = [model.encode_text(tokenizer(list(texts[i:i + batch_size])).to(device), normalize=normalize).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def _text_signature(model) -> tuple:
    """Identity and L2 norm of every text-tower tensor (one fused norm kernel, one copy to the host).

    Any optimiser step or ``load_state_dict`` changes a norm; version counters are not enough (fused optimisers
    update in place without bumping them).
    """
    params = [p for n, p in model.named_parameters() if encoder_of(n) == "text"]
    if not params:
        return ((), torch.empty(0))
    norms = torch.stack(torch._foreach_norm([p.detach().float() for p in params])).cpu()
    return (tuple(p.data_ptr() for p in params), norms)


def build_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence, *, device="cpu",
                     cache: bool = False) -> torch.Tensor:
    """Return zero-shot classifier weights ``[D, C]`` (open_clip's template-ensemble builder).

    ``cache=True`` reuses the weights last built for the same class names and templates while the text tower is
    unchanged: same tensors with the same norms (any optimiser step or ``load_state_dict`` changes them).
    """
    if not cache:
        return open_clip.build_zero_shot_classifier(
            model, tokenizer, classnames=list(classnames), templates=list(templates), device=device)
    key = (tuple(classnames), tuple(t if isinstance(t, str) else id(t) for t in templates), str(device))
    store = model.__dict__.setdefault("_clipunlearn_classifiers", {})
    ptrs, norms = _text_signature(model)
    hit = store.get(key)
    if hit is not None and hit[0] == ptrs and torch.equal(hit[1], norms):
        return hit[2]
    weights = open_clip.build_zero_shot_classifier(
        model, tokenizer, classnames=list(classnames), templates=list(templates), device=device)
    store[key] = (ptrs, norms, weights)
    return weights


# --------------------------------------------------------------------------- #
# Zero-shot classification
# --------------------------------------------------------------------------- #
def get_logit_scale(model) -> float:
    """Return the model's learned temperature ``logit_scale.exp()`` (CLIP's: 100; the mini model's: about 15.6)."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        raise ValueError(f"{type(model).__name__} has no logit_scale: pass logit_scale=... (e.g. 100.0, CLIP's value)")
    return float(torch.as_tensor(scale).detach().float().exp())


class NonFiniteOutputError(ValueError):
    """A model's outputs are NaN or infinite: it diverged, and a metric of it means nothing."""


@torch.no_grad()
def predict_logits(model, classifier: torch.Tensor, dataset, *, indices=None, batch_size: int = 512,
                   device="cpu", logit_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return zero-shot ``(logits [N, C], targets [N])``: ``logit_scale`` x cosine similarity.

    ``logit_scale`` defaults to the model's own learned temperature (:func:`get_logit_scale`); it does not change
    accuracies, only the softmax / cross-entropy (membership inference).
    """
    scale = get_logit_scale(model) if logit_scale is None else float(logit_scale)
    feats, targets = encode_images(model, dataset, indices=indices, batch_size=batch_size, device=device)
    if not len(targets):
        return torch.empty(0, classifier.shape[1]), targets
    logits = scale * feats @ classifier.float().cpu()
    bad = int((~torch.isfinite(logits)).any(1).sum())
    if bad:  # a diverged model: an accuracy would be an argmax over NaN
        raise NonFiniteOutputError(f"the model's outputs on {bad} of {len(logits)} images are not finite "
                                   "(a diverged run?)")
    return logits, targets


def accuracy(model, classifier, dataset, *, indices=None, batch_size: int = 512, device="cpu") -> float:
    """Return top-1 zero-shot accuracy (fraction) on ``dataset`` or its ``indices`` subset (NaN if empty)."""
    logits, targets = predict_logits(model, classifier, dataset, indices=indices, batch_size=batch_size, device=device)
    return float((logits.argmax(1) == targets).float().mean()) if len(targets) else float("nan")


def per_class_accuracy(model, classifier, dataset, *, indices=None, classnames=None, batch_size: int = 512,
                       device="cpu") -> dict[str, float]:
    """Return ``{classname: accuracy}`` for every class present in the evaluated subset."""
    logits, targets = predict_logits(model, classifier, dataset, indices=indices, batch_size=batch_size, device=device)
    names = list(classnames or dataset.classnames)
    correct = logits.argmax(1) == targets
    return {names[c]: float(correct[targets == c].float().mean()) for c in targets.unique().tolist()}


def confusion_matrix(logits: torch.Tensor, targets: torch.Tensor, *, num_classes: int | None = None) -> torch.Tensor:
    """Return the row-normalised confusion matrix ``[C, C]`` (row = true class, column = prediction).

    Counts from ``sklearn.metrics.confusion_matrix``; a class with no sample has a zero row.
    """
    from sklearn import metrics as sklearn_metrics  # lazy: scikit-learn takes about 1 s to import

    c = num_classes or logits.shape[1]
    counts = sklearn_metrics.confusion_matrix(targets.cpu().numpy(), logits.argmax(1).cpu().numpy(),
                                              labels=list(range(c)))
    counts = torch.as_tensor(counts, dtype=torch.float32)
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


# --------------------------------------------------------------------------- #
# Retrieval
# --------------------------------------------------------------------------- #
def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, *, ks: Sequence[int] = (1, 5, 10),
                     groups: torch.Tensor | None = None, queries=None, text_groups: torch.Tensor | None = None,
                     text_queries=None) -> dict[str, float]:
    """Return image-to-text and text-to-image recall@k (``i2t_r1``, ..., ``t2i_r10``).

    Row ``i`` of both feature matrices is a matching pair. With ``groups`` (one id per pair, e.g. the class of the
    caption) a hit is any item of the same group, so identical captions are not counted as misses. ``queries`` (row
    indices) scores only those images / texts as queries, against the whole pool. With ``text_groups`` the texts are
    their own set (e.g. each distinct caption once): image ``i`` matches text ``j`` when ``groups[i] ==
    text_groups[j]``, ``queries`` picks the image queries and ``text_queries`` the text queries.
    """
    sims = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
    n_img, n_txt = sims.shape
    if text_groups is None:  # row i of both matrices is a pair
        if n_img != n_txt:
            raise ValueError(f"{n_img} images but {n_txt} texts: pass groups and text_groups to match them by group")
        img_ids = txt_ids = torch.arange(n_img) if groups is None else torch.as_tensor(groups)
        text_queries = queries
    else:
        if groups is None:
            raise ValueError("text_groups needs groups (the group id of every image)")
        img_ids, txt_ids = torch.as_tensor(groups), torch.as_tensor(text_groups)
    match = img_ids.view(-1, 1) == txt_ids.view(1, -1)
    return recall_from_similarity(sims, match, ks=ks, image_rows=queries, text_rows=text_queries)


def recall_from_similarity(sims: torch.Tensor, match: torch.Tensor, *, ks: Sequence[int] = (1, 5, 10),
                           image_rows=None, text_rows=None) -> dict[str, float]:
    """Return ``i2t_r{k}`` and ``t2i_r{k}`` of an image-text similarity matrix ``sims [N_img, N_txt]``.

    ``match [N_img, N_txt]`` (bool) says which text belongs to which image. Image query ``i`` is a hit at
    ``k`` when *any* matching text is among its ``k`` most similar texts (rank < k); text query ``j`` when a
    matching image is among its ``k`` most similar images. ``image_rows`` / ``text_rows`` (indices) pick
    the queries (None: all), ranked against every column. The mean over the queries; NaN without one.
    """
    def as_rows(q, n):
        return torch.arange(n) if q is None else torch.as_tensor(q, dtype=torch.long)

    out = {}
    for name, s, m, rows in (("i2t", sims, match, as_rows(image_rows, sims.shape[0])),
                             ("t2i", sims.T, match.T, as_rows(text_rows, sims.shape[1]))):
        order = s[rows].argsort(dim=1, descending=True)
        hits = m[rows].gather(1, order)
        for k in ks:
            out[f"{name}_r{k}"] = float(hits[:, :min(k, s.shape[1])].any(1).float().mean())
    return out


# --------------------------------------------------------------------------- #
# Membership inference
# --------------------------------------------------------------------------- #
def auc_score(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Return ROC AUC = P(positive score > negative score), ties counted half (``sklearn.metrics.roc_auc_score``).

    NaN when either side is empty.
    """
    from sklearn import metrics as sklearn_metrics  # lazy: scikit-learn takes about 1 s to import

    pos, neg = positive.detach().double().flatten().cpu(), negative.detach().double().flatten().cpu()
    if not len(pos) or not len(neg):
        return float("nan")
    if not (torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise NonFiniteOutputError("scores for the AUC are not finite (a diverged run?)")
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    return float(sklearn_metrics.roc_auc_score(labels.numpy(), torch.cat([pos, neg]).numpy()))


def membership_inference(model, classifier, dataset, *, member_idx, nonmember_idx, nonmember_dataset=None,
                         batch_size: int = 512, device="cpu") -> dict[str, float]:
    """Loss-threshold membership inference: can an attacker tell members from unseen samples?

    Scores each sample by its zero-shot cross-entropy loss at the model's own temperature (``logit_scale.exp()``;
    low loss = "member") and returns ``{"mia": AUC, "member_loss", "nonmember_loss"}``. ``mia`` = 0.5 means the
    forget samples look like never-seen samples (the goal of unlearning); above 0.5 means they are still
    recognisable as training data.
    """
    def losses(ds, idx):
        logits, targets = predict_logits(model, classifier, ds, indices=idx, batch_size=batch_size, device=device)
        return F.cross_entropy(logits, targets, reduction="none")

    member = losses(dataset, member_idx)
    nonmember = losses(nonmember_dataset if nonmember_dataset is not None else dataset, nonmember_idx)
    return {"mia": auc_score(-member, -nonmember), "member_loss": float(member.mean()),
            "nonmember_loss": float(nonmember.mean())}


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Return the Jensen-Shannon divergence (base 2, in [0, 1]) between the rows of ``p`` and ``q`` ``[N, C]``.

    ``JS = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``; terms with a zero probability count 0.
    """
    p, q = p.double(), q.double()
    m = (p + q) / 2

    def kl(a, b):
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-300)) - torch.log2(b.clamp_min(1e-300))),
                           torch.zeros_like(a)).sum(1)

    return ((kl(p, m) + kl(q, m)) / 2).clamp(0.0, 1.0)


@torch.no_grad()
def zero_shot_probs(model, dataset, *, tokenizer, classnames, templates, indices=None, batch_size: int = 512,
                    device="cpu") -> torch.Tensor:
    """Return the zero-shot output distribution ``[N, C]`` of ``model`` on ``dataset`` (``indices``): its own
    classifier over ``classnames`` and ``templates``, at its own temperature."""
    clf = build_classifier(model, tokenizer, classnames, templates, device=device)
    logits, _ = predict_logits(model, clf, dataset, indices=indices, batch_size=batch_size, device=device)
    return logits.softmax(1)


def output_divergence(model, reference, dataset, *, tokenizer, classnames, templates, indices=None,
                      batch_size: int = 512, device="cpu", reference_probs: torch.Tensor | None = None) -> float:
    """Return the mean Jensen-Shannon divergence of the zero-shot output distributions of ``model`` and
    ``reference`` on ``dataset`` (``indices``): each model with its own classifier and temperature
    (:func:`zero_shot_probs`; ``reference_probs``: the reference's, computed once and reused).

    0 means the two models answer alike on these images (e.g. an unlearned model and the retrained one
    on the forget images).
    """
    kw = dict(tokenizer=tokenizer, classnames=classnames, templates=templates, indices=indices,
              batch_size=batch_size, device=device)
    ref = reference_probs if reference_probs is not None else zero_shot_probs(reference, dataset, **kw)
    out = js_divergence(zero_shot_probs(model, dataset, **kw), ref)
    return float(out.mean()) if len(out) else float("nan")


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Return the entropy (nats) of each row's softmax ``[N]``."""
    logp = logits.double().log_softmax(1)
    return -(logp.exp() * logp).sum(1)


def mia_efficacy(member: torch.Tensor, nonmember: torch.Tensor, forget: torch.Tensor) -> float:
    """Return the fraction of ``forget`` samples an entropy attack calls non-members (higher: more forgotten).

    The attack of the saliency-unlearning literature ("MIA-efficacy"): a logistic regression on one
    feature, the prediction entropy (:func:`prediction_entropy`), fitted on ``member`` (the retain training
    images, label 1) against ``nonmember`` (test images, label 0), balanced by class weights, then applied to
    the forget images. Inputs are entropies ``[N]``.
    """
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn takes about 1 s to import

    x = torch.cat([member, nonmember]).double().view(-1, 1).numpy()
    y = torch.cat([torch.ones(len(member)), torch.zeros(len(nonmember))]).numpy()
    if not len(member) or not len(nonmember) or not len(forget):
        return float("nan")
    attack = LogisticRegression(class_weight="balanced").fit(x, y)
    return float((attack.predict(forget.double().view(-1, 1).numpy()) == 0).mean())


# --------------------------------------------------------------------------- #
# Time and memory
# --------------------------------------------------------------------------- #
def _rss_mb() -> float:
    """Return the resident memory of this process now (Linux), else its lifetime peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the lifetime peak
        import resource  # Unix only

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Return ``VmHWM``, the peak resident memory since the last reset (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


@contextlib.contextmanager
def measure_run(*, device="cpu", interval: float = 0.02):
    """Measure a block: yields a dict that gets ``seconds``, ``peak_mem_mb`` and ``base_mem_mb`` on exit.

    ``peak_mem_mb`` is the memory the *block* added at its peak (MiB), not the process total, so it does not grow
    with what a notebook ran before:

    * CUDA device: ``max_memory_allocated - memory_allocated`` at entry (peak stats reset at entry);
      ``base_mem_mb`` is the memory allocated at entry.
    * CPU: ``gc.collect()``, then the peak resident memory of the process during the block minus the resident
      memory at entry (>= 0); ``base_mem_mb`` is the latter. The peak is the kernel's counter (reset at entry) on
      Linux, else the resident memory sampled every ``interval`` seconds.
    """
    stats: dict[str, float] = {}
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    thread, stop = None, threading.Event()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        gc.collect()
        base = _rss_mb()
        kernel_peak = _reset_peak_rss()
        peak = [base]
        if not kernel_peak:
            def sample():
                while not stop.wait(interval):
                    peak[0] = max(peak[0], _rss_mb())

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
    start = time.perf_counter()
    try:
        yield stats
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        stats["seconds"] = time.perf_counter() - start
        if cuda:
            top = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            if thread is not None:
                stop.set()
                thread.join()
            top = max(peak[0], _rss_mb(), _peak_rss_mb() if kernel_peak else 0.0)
        stats["peak_mem_mb"] = max(top - base, 0.0)
        stats["base_mem_mb"] = base
