"""Synthetic forget samples: images a CLIP model itself recognises as a class (paper B).

Paper B (Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with Synthetic
Samples", WACV 2025) forgets a class without any real image of it. It first
*generates* images of the class by gradient ascent from Gaussian noise on

    s(x) = logit_scale * cos(f_img(x), w_y) - norm_weight * ||x - center||_2

with a normalised step ``x <- x + step_size * g / ||g||``, a random jitter
(``torch.roll`` by up to ``jitter`` pixels, undone after the step), clamping to
the valid pixel range, a Gaussian blur (sigma 0.5) every ``blur_every`` steps, and
stops an image as soon as ``softmax(logit_scale * cos(f_img(x), W))`` ranks the
target first with probability above a per-class threshold.

The authors' code optimises one image at a time. :func:`generate_synthetic`
optimises a whole set at once: every step runs one forward/backward pass over all
images still *active*; an image that reaches its threshold is frozen (masked out)
while the others go on. :func:`generate_synthetic_sequential` is the one-image-at-
a-time reference loop of the very same algorithm (same per-image random streams),
used by the benchmark and the tests.

Two forms of the algorithm, chosen by keyword (the paper profile uses the authors'):

* **parametrisation** -- ``"project"``: the variable is the model's input, clamped to
  the model's valid pixel range, and is itself the returned image. ``"authors"`` (the
  authors' ``clip_forget_imagegen.py``): the variable is an ImageNet-normalised image,
  clamped to that range, that the model sees normalised a second time with its own
  statistics; the stop check and every later use take ``normalise(minmax_rescale(x *
  imagenet_std + imagenet_mean))``.
* **failure** -- ``restart=False`` (project): an image keeps its noise and its threshold
  is lowered by ``threshold_decay`` (not below ``min_threshold``) after every
  ``patience`` steps in which it has not reached it; images that never reach it are
  kept with ``reached = False``. ``restart=True`` (authors): after ``steps`` failed
  iterations the image restarts from fresh noise with its class's threshold lowered by
  ``threshold_decay`` (floor ``min_threshold``), and the lowered threshold holds for
  every later image of the class. Batched, a chunk's failed images restart together in
  the next round and a class is lowered once per round. :meth:`SyntheticSet.select_reached`
  keeps the images that reached their threshold (what the authors keep).

The stop check may use its own temperature (``stop_logit_scale``: the authors' code
ascends at the model's ``logit_scale`` and checks at 100).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .images import (clamp_to_range, gaussian_blur, image_generator, minmax_rescale,  # noqa: F401  (re-exported)
                     pixel_bounds, roll_images)

from .checkpoints import load_torch_file
from .clip import PRECISIONS
from .data import check_classnames
from .results import save_torch_atomic

__all__ = [
    "SyntheticSet", "generate_synthetic", "generate_synthetic_sequential", "roll_images", "gaussian_blur",
    "clamp_to_range", "pixel_bounds", "minmax_rescale", "image_generator", "save_synthetic", "load_synthetic",
    "IMAGENET_MEAN", "IMAGENET_STD", "PARAMETRISATIONS", "PRECISIONS",
]


# --------------------------------------------------------------------------- #
# The result
# --------------------------------------------------------------------------- #
class SyntheticSet(Dataset):
    """Generated images in model space with the bookkeeping of their generation.

    Attributes: ``images`` (float ``[N, 3, H, W]``, already normalised), ``targets``
    (LongTensor ``[N]``, index into ``classnames``), ``classnames``, ``probs`` (final
    target probability), ``steps_taken`` (steps until the image stopped),
    ``reached`` (bool: the image reached its threshold) and ``thresholds`` (the
    threshold in force when it stopped).
    """

    def __init__(self, images, targets, *, classnames, probs, steps_taken, reached, thresholds):
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.classnames = list(classnames)
        self.probs, self.steps_taken = probs, steps_taken
        self.reached, self.thresholds = reached, thresholds

    def __len__(self) -> int:
        return len(self.targets)

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images [B, 3, H, W], targets [B])`` for ``indices`` at once."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.targets[idx]

    def __getitem__(self, index):
        return self.images[index], self.targets[index]

    def __getitems__(self, indices):  # whole-batch fetching by DataLoader
        x, y = self.get_batch(indices)
        return list(zip(x, y))

    def subset(self, mask_or_indices) -> "SyntheticSet":
        """Return a new set with only the selected images (bool mask or indices)."""
        idx = torch.as_tensor(mask_or_indices)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long()
        return SyntheticSet(self.images[idx], self.targets[idx], classnames=self.classnames, probs=self.probs[idx],
                            steps_taken=self.steps_taken[idx], reached=self.reached[idx],
                            thresholds=self.thresholds[idx])

    def select_reached(self) -> "SyntheticSet":
        """Return only the images that reached their threshold (what the original code keeps)."""
        return self.subset(self.reached)

    def summary(self) -> dict:
        """Return per-class counts: ``{classname: {"n", "reached", "mean_prob", "mean_steps", "max_steps"}}``."""
        out = {}
        for c in self.targets.unique().tolist():
            m = self.targets == c
            out[self.classnames[c]] = {
                "n": int(m.sum()), "reached": int(self.reached[m].sum()),
                "mean_prob": float(self.probs[m].mean()), "mean_steps": float(self.steps_taken[m].float().mean()),
                "max_steps": int(self.steps_taken[m].max()), "min_threshold": float(self.thresholds[m].min()),
            }
        return out

    def state_dict(self) -> dict:
        """Return the tensors and class names (what :func:`save_synthetic` writes)."""
        return {"images": self.images, "targets": self.targets, "classnames": list(self.classnames),
                "probs": self.probs, "steps_taken": self.steps_taken, "reached": self.reached,
                "thresholds": self.thresholds}


def save_synthetic(path, synthetic: SyntheticSet) -> Path:
    """Write ``synthetic`` to ``path`` atomically (``results.write_atomic``: temp file, then ``os.replace``)."""
    return save_torch_atomic(synthetic.state_dict(), path)


def load_synthetic(path) -> SyntheticSet:
    """Load a set written by :func:`save_synthetic` (``weights_only=True``)."""
    state = load_torch_file(path, restore="delete it and the set is generated again on next use")
    return SyntheticSet(state.pop("images"), state.pop("targets"), **state)


# --------------------------------------------------------------------------- #
# Generation
# --------------------------------------------------------------------------- #
def _resolve_classes(classes, classnames, num_classes: int) -> list[int]:
    out = []
    for c in classes:
        if isinstance(c, str):
            if classnames is None:
                raise ValueError(f"class {c!r} given by name: pass classnames=[...] (the classifier's columns)")
            out.extend(check_classnames([c], classnames))
        else:
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"class index {c} out of range: the classifier has {num_classes} classes")
            out.append(int(c))
    if not out:
        raise ValueError("classes is empty: name at least one class to generate")
    return out


def _resolve_thresholds(thresholds, classes: list[int], classnames) -> list[float]:
    return _per_class(thresholds, classes, classnames, "thresholds")


class _Frozen:
    """Context: model in eval mode with parameters not requiring grad (input gradients only)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.training)


#: ImageNet pixel statistics: the space the authors' code optimises in (``parametrisation="authors"``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARAMETRISATIONS = ("project", "authors")


class _Space:
    """Where the ascent's variable lives and how the model sees it.

    ``project``: the variable is the model's input (model space); the stop check and
    the returned image are the variable itself. ``authors`` (the authors' code): the
    variable is an image in ImageNet-normalised space, clamped to that range; the model
    sees it normalised once more with its own statistics (as if it were a [0, 1] image);
    the stop check and the returned image are ``normalise(minmax_rescale(x * imagenet_std
    + imagenet_mean))``.
    """

    def __init__(self, parametrisation: str, *, mean, std, device):
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {parametrisation!r}; valid: {', '.join(PARAMETRISATIONS)}")
        self.kind = parametrisation
        as4 = lambda v: torch.as_tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.mean, self.std = as4(mean), as4(std)
        self.imnet_mean, self.imnet_std = as4(IMAGENET_MEAN), as4(IMAGENET_STD)
        if self.kind == "project":
            self.bounds = pixel_bounds(mean, std, device=device)
        else:
            self.bounds = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD, device=device)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.kind == "project" else (x - self.mean) / self.std

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The image the stop check classifies and that is returned (model space)."""
        if self.kind == "project":
            return x
        return (minmax_rescale(x * self.imnet_std + self.imnet_mean) - self.mean) / self.std


def _encode(model, images: torch.Tensor, precision: str) -> torch.Tensor:
    """Unit-norm float32 image features; ``precision="bf16"`` runs the encoder under bf16 autocast."""
    if precision == "bf16":
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            feats = model.encode_image(images)
    else:
        feats = model.encode_image(images)
    return F.normalize(feats.float(), dim=-1)


def _optimise_chunk(model, weights, x, targets, thresholds, offsets, *, steps, step_size, blur_every, blur_sigma,
                    norm_weight, center, threshold_decay, min_threshold, patience, logit_scale, stop_logit_scale,
                    space, grayscale, precision, bar):
    """Run the ascent on a chunk of images at once; return (x, final, probs, steps_taken, reached, thresholds).

    ``weights``: class text embeddings ``[C, D]`` (unit norm); ``offsets``: jitter ``[N, steps, 2]``;
    ``threshold_decay``: per image ``[N]``. Bookkeeping stays on ``x``'s device: one host sync per step.
    """
    n, dev = len(x), x.device
    lo, hi = space.bounds
    targets, thresholds = targets.to(dev), thresholds.to(dev).clone()
    threshold_decay, offsets = threshold_decay.to(dev), offsets.to(dev)
    w_target = weights[targets]  # [N, D]
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    reached = torch.zeros(n, dtype=torch.bool, device=dev)
    probs = torch.zeros(n, device=dev)
    steps_taken = torch.full((n,), steps, dtype=torch.long, device=dev)
    final = space.final(x)
    for t in range(steps):
        act = (~done).nonzero().flatten()
        if len(act) == 0:
            break
        shifts = offsets[act, t]
        xa = roll_images(x[act], shifts).requires_grad_(True)
        cos = (_encode(model, space.model_input(xa), precision) * w_target[act]).sum(-1)
        score = logit_scale * cos - norm_weight * (xa - center).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(score.sum(), xa)
        if grayscale:
            grad = grad.mean(1, keepdim=True).expand_as(grad)
        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        with torch.no_grad():
            xa = roll_images(xa.detach() + step_size * grad.to(xa.dtype), -shifts)
            xa = torch.maximum(torch.minimum(xa, hi), lo)
            if blur_every and t % blur_every == 0:
                xa = gaussian_blur(xa, sigma=blur_sigma).to(x.dtype)  # bf16 under a global autocast: cast back
            x[act] = xa
            fa = space.final(xa)
            final[act] = fa
            p = (stop_logit_scale * _encode(model, fa, precision) @ weights.T).float().softmax(-1)
        tgt = targets[act]
        p_target = p.gather(1, tgt.view(-1, 1)).flatten()
        hit = (p.argmax(1) == tgt) & (p_target > thresholds[act])
        probs[act] = p_target
        newly = act[hit]
        reached[newly] = True
        done[newly] = True
        steps_taken[newly] = t + 1
        if patience and (t + 1) % patience == 0:  # lower the threshold of images still searching
            still = act[~hit]
            lowered = torch.clamp(thresholds[still] - threshold_decay[still], min=min_threshold)
            thresholds[still] = torch.minimum(thresholds[still], lowered)
        if bar is not None:
            bar.update(1)
            if not bar.disable:
                bar.set_postfix(active=int((~done).sum()), reached=int(reached.sum()))
    return x, final, probs, steps_taken, reached, thresholds


def _per_class(value, classes: list[int], classnames, what: str) -> list[float]:
    """A float, one value per class, or ``{classname: value}`` -> one float per class (missing keys: error)."""
    if isinstance(value, (int, float)):
        return [float(value)] * len(classes)
    if isinstance(value, dict):
        names = [classnames[c] if classnames is not None else c for c in classes]
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{what} has no entry for {missing}; keys: {list(value)}")
        return [float(value[n]) for n in names]
    value = [float(t) for t in value]
    if len(value) != len(classes):
        raise ValueError(f"{len(value)} {what} for {len(classes)} classes: give one per class, "
                         "a single float or a dict {classname: value}")
    return value


def generate_synthetic(model, text_weights: torch.Tensor, *, classes: Sequence, n_per_class: int = 64,
                       image_size: int = 224, mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                       std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
                       classnames: Sequence[str] | None = None, steps: int = 3000, step_size: float = 25.0,
                       jitter: int = 16, blur_every: int = 10, blur_sigma: float = 0.5, norm_weight: float = 1e-3,
                       thresholds=0.8, threshold_decay=0.025, min_threshold: float = 0.45,
                       patience: int | None = None, logit_scale: float = 100.0, init_std: float = 1.0,
                       center: float = 0.0,
                       grayscale: bool = False, seed: int = 0, batch_size: int = 64, batched: bool = True,
                       parametrisation: str = "project", restart: bool = False, max_attempts: int = 20,
                       stop_logit_scale: float | None = None, precision: str = "fp32",
                       device="cpu", progress: bool = True) -> SyntheticSet:
    """Return a :class:`SyntheticSet` of ``n_per_class`` images per class in ``classes``, made by gradient ascent.

    Paper B, Sec. 3.1: ascend ``logit_scale * cos(f_img(x), w_y) - norm_weight * ||x - center||`` from
    ``N(center, init_std^2)`` noise with the step ``x += step_size * g / ||g||`` (per image), a
    jitter of up to ``jitter`` pixels undone after each step, clamping to the valid range
    and a Gaussian blur every ``blur_every`` steps; an image stops when its target is the
    arg-max with ``softmax(stop_logit_scale * cos)`` above its threshold
    (``stop_logit_scale`` defaults to ``logit_scale``).

    ``text_weights``: zero-shot classifier ``[D, C]`` (e.g. ``metrics.build_classifier``)
    over every class of the dataset; ``classes``: indices or names (with ``classnames``);
    ``thresholds`` and ``threshold_decay``: a float, one per class, or ``{classname: float}``.
    ``mean`` / ``std``: the model's pixel normalisation.

    ``parametrisation``: ``"project"`` (default) optimises the model's input directly,
    clamped to the model's valid range; ``"authors"`` is the authors' code: the variable
    is an ImageNet-normalised image (:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`),
    clamped to that range, which the model sees normalised a second time with
    ``mean`` / ``std``; the stop check, ``images`` and ``probs`` use
    ``normalise(minmax_rescale(x * imagenet_std + imagenet_mean))``. The authors' step of
    25 is then about 3.7 times larger relative to the model input, and the norm penalty
    (``center`` 0) pulls towards black instead of the data mean.

    Failure: with ``restart=False`` (project) an image keeps its noise and its threshold
    is lowered by ``threshold_decay`` (not below ``min_threshold``) after every
    ``patience`` steps without reaching it (default ``steps // 10``); images that never
    reach it are kept with ``reached = False``. With ``restart=True`` (the authors' code)
    the threshold is fixed during an attempt (``patience`` defaults to 0); an image that
    has not reached it after ``steps`` iterations restarts from fresh noise, and its
    class's threshold is lowered by ``threshold_decay`` (not below ``min_threshold``) for
    the restarted images and every later image of the class. Batched form: all images of
    a chunk run an attempt together; after it, every class with a failure is lowered
    once and its failed images restart in the next round (the authors' one-image loop
    lowers once per failed image; ``batched=False`` is exactly that loop). At most
    ``max_attempts`` attempts per image; :meth:`SyntheticSet.select_reached` keeps the
    images that reached their threshold (what the authors keep). ``steps_taken`` counts
    the steps of every attempt.

    ``grayscale`` keeps the three channels equal (for models trained on grey images).
    ``center`` (default 0) is where the noise starts and what the norm penalty pulls to.
    ``precision="bf16"`` runs the image encoder under bf16 autocast (features and images
    stay float32); the function also works inside a caller's global autocast.
    ``batched=False`` runs the one-image-at-a-time reference loop (the same computation;
    only floating-point rounding differs, which the normalised ascent can amplify over
    many steps for some images). Image ``i`` draws its noise and jitter (and those of
    its restarts) from :func:`image_generator` ``(seed, i)``, so without restarts the
    results do not depend on ``batch_size``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    weights = F.normalize(text_weights.detach().float().T.to(device), dim=-1)  # [C, D]
    classes = _resolve_classes(classes, classnames, weights.shape[0])
    per_class = _resolve_thresholds(thresholds, classes, classnames)
    decay_per_class = _per_class(threshold_decay, classes, classnames, "threshold_decay")
    if patience is None:
        patience = 0 if restart else max(1, steps // 10)
    if stop_logit_scale is None:
        stop_logit_scale = logit_scale
    space = _Space(parametrisation, mean=mean, std=std, device=device)
    targets = torch.tensor(classes).repeat_interleave(n_per_class)
    decay = torch.tensor(decay_per_class).repeat_interleave(n_per_class)
    n = len(targets)

    # per-image random streams: initial noise, then the jitter offsets of every step (then those of restarts)
    generators = [image_generator(seed, i) for i in range(n)]

    def draw(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = generators[i]
        noise = torch.randn(1 if grayscale else 3, image_size, image_size, generator=g) * init_std + center
        return (noise.expand(3, -1, -1) if grayscale else noise), torch.randint(0, jitter + 1, (steps, 2), generator=g)

    first = [draw(i) for i in range(n)]
    x_all = torch.stack([im for im, _ in first]).to(device)
    offsets = torch.stack([o for _, o in first])
    class_thr = dict(zip(classes, per_class))  # the authors' running per-class threshold (restart mode)
    class_decay = dict(zip(classes, decay_per_class))

    chunk = batch_size if batched else 1
    out = {k: [] for k in ("x", "probs", "steps", "reached", "thr")}
    kwargs = dict(steps=steps, step_size=step_size, blur_every=blur_every, blur_sigma=blur_sigma,
                  norm_weight=norm_weight, center=center, min_threshold=min_threshold, patience=patience,
                  logit_scale=logit_scale, stop_logit_scale=stop_logit_scale, space=space, grayscale=grayscale,
                  precision=precision)
    with _Frozen(model):
        chunks = list(range(0, n, chunk))
        outer = tqdm(chunks, desc="synthetic images", unit="img" if not batched else "batch",
                     disable=not progress or batched)
        for s in outer:
            idx = torch.arange(s, min(s + chunk, n))
            bar = tqdm(total=steps, desc=f"ascent {s // chunk + 1}/{len(chunks)}", leave=False,
                       disable=not progress or not batched)
            start = (torch.tensor([class_thr[int(c)] for c in targets[idx]]) if restart
                     else torch.tensor(per_class).repeat_interleave(n_per_class)[idx])
            x, final, p, st, r, thr = _optimise_chunk(model, weights, x_all[idx.to(device)].clone(), targets[idx],
                                                      start, offsets[idx], threshold_decay=decay[idx], bar=bar,
                                                      **kwargs)
            final, p, st, r, thr = final.cpu(), p.cpu(), st.cpu(), r.cpu(), thr.cpu()
            attempt = 1
            while restart and attempt < max_attempts and not r.all():
                failed = (~r).nonzero().flatten()
                for c in targets[idx][failed].unique().tolist():  # one lowering per class and round
                    class_thr[c] = min(class_thr[c], max(class_thr[c] - class_decay[c], min_threshold))
                fresh = [draw(int(idx[i])) for i in failed]
                bar.reset(total=steps)
                bar.set_description(f"ascent {s // chunk + 1}/{len(chunks)}, restart {attempt}")
                sub = idx[failed]
                _, f2, p2, st2, r2, thr2 = _optimise_chunk(
                    model, weights, torch.stack([im for im, _ in fresh]).to(device), targets[sub],
                    torch.tensor([class_thr[int(c)] for c in targets[sub]]), torch.stack([o for _, o in fresh]),
                    threshold_decay=decay[sub], bar=bar, **kwargs)
                final[failed], p[failed], r[failed], thr[failed] = f2.cpu(), p2.cpu(), r2.cpu(), thr2.cpu()
                st[failed] += st2.cpu()
                attempt += 1
            if restart and not r.all():  # images still failing lower their class's threshold for later chunks
                for c in targets[idx][~r].unique().tolist():
                    class_thr[c] = min(class_thr[c], max(class_thr[c] - class_decay[c], min_threshold))
            bar.close()
            for k, v in zip(out, (final, p, st, r, thr)):
                out[k].append(v)
    names = list(classnames) if classnames is not None else [str(c) for c in range(weights.shape[0])]
    return SyntheticSet(torch.cat(out["x"]), targets, classnames=names, probs=torch.cat(out["probs"]),
                        steps_taken=torch.cat(out["steps"]), reached=torch.cat(out["reached"]),
                        thresholds=torch.cat(out["thr"]))


def generate_synthetic_sequential(model, text_weights: torch.Tensor, **kwargs) -> SyntheticSet:
    """Return :func:`generate_synthetic` run one image at a time (the original code's loop; reference)."""
    kwargs["batched"] = False
    return generate_synthetic(model, text_weights, **kwargs)
