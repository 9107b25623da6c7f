"""Training-free, data-free class forgetting: nullspace projection of the class's text embeddings.

Mishra et al., "Erasing CLIP Memories: Non-Destructive, Data-Free Zero-Shot class Unlearning in
CLIP Models" (arXiv 2512.14137): take the text embeddings of the class to forget (one per prompt
template, unit norm), an orthonormal basis ``Q`` ``[D, r]`` of the subspace they span, and project
those directions out of the image tower's final projection::

    P = I - alpha * Q Q^T,        W_proj <- P W_proj  (and its bias b <- P b)

so that every image feature loses ``alpha`` of its component along the class's text directions
and no longer aligns with the class prompt. ``alpha = 1`` is the full projection (the image
features are orthogonal to every prompt of the class), ``0 < alpha < 1`` the paper's partial
projection, which trades forgetting against what the other classes keep; its strength is
selected like every method's (``harness.run_selected``), on held-out *synthetic* images of the
class (no real image of it is seen). The cost is one SVD of the prompt embeddings and one matrix product.

The paper's retain-aware variant (CCUP) also uses the other classes' text embeddings; this is the
plain projection of the forget class's prompts (``docs/PAPERS.md``).
"""

from __future__ import annotations

import copy

import torch

from .. import harness, metrics
from ..clip import release_memory
from ..registry import register_procedure

__all__ = ["build_text_basis", "build_projection", "find_image_projection", "project_image_tower", "run_nullspace"]


def build_text_basis(model, tokenizer, classnames, templates, *, device="cpu", tol: float = 1e-6) -> torch.Tensor:
    """Return an orthonormal basis ``[D, r]`` of the unit text embeddings of every template x class in ``classnames``.

    ``templates``: format strings or callables (as ``metrics.build_classifier`` takes them); ``r`` is the
    rank of the embeddings (singular values above ``tol`` times the largest).
    """
    texts = [t(c) if callable(t) else t.format(c) for c in classnames for t in templates]
    if not texts:
        raise ValueError("no text to project out: give at least one class name and one template")
    with torch.no_grad():
        emb = metrics.encode_texts(model, tokenizer, texts, device=device).float()
    emb = torch.nn.functional.normalize(emb, dim=-1).T  # [D, m]
    u, s, _ = torch.linalg.svd(emb, full_matrices=False)
    return u[:, s > tol * s[0]]


def build_projection(basis: torch.Tensor, alpha: float) -> torch.Tensor:
    """Return ``P = I - alpha * Q Q^T`` ``[D, D]`` for an orthonormal ``basis`` ``Q`` ``[D, r]``, alpha in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0: nothing, 1: the full projection), got {alpha}")
    eye = torch.eye(basis.shape[0], dtype=basis.dtype, device=basis.device)
    return eye - alpha * basis @ basis.T


def find_image_projection(model) -> tuple[str, torch.nn.Parameter, torch.nn.Parameter | None]:
    """Return ``(kind, weight, bias)`` of the image tower's final projection into the joint space.

    ``"linear"``: a ModifiedResNet's attention-pool output ``attnpool.c_proj`` (``y = W x + b``,
    ``W`` ``[D, width]``); ``"matrix"``: a ViT's ``proj`` (``y = x @ proj``, ``[width, D]``, no bias).
    """
    visual = model.visual
    attnpool = getattr(visual, "attnpool", None)
    if attnpool is not None and hasattr(attnpool, "c_proj"):
        return "linear", attnpool.c_proj.weight, attnpool.c_proj.bias
    if isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
        return "matrix", visual.proj, None
    raise ValueError(f"no final image projection found in {type(visual).__name__}: valid towers are open_clip's "
                     "ModifiedResNet (attnpool.c_proj) and VisionTransformer (proj)")


def project_image_tower(model, projection: torch.Tensor) -> None:
    """Apply ``projection`` ``P`` ``[D, D]`` to the output of the image tower's final projection, in place."""
    kind, weight, bias = find_image_projection(model)
    with torch.no_grad():
        p = projection.to(weight.device, weight.dtype)
        if kind == "linear":
            weight.copy_(p @ weight)
            if bias is not None:
                bias.copy_(p @ bias)
        else:
            weight.copy_(weight @ p.T)


def run_nullspace(task, *, model, tokenizer, alpha: float, val_forget=None, config: dict | None = None,
                  evaluate: bool = True, device="cpu"):
    """Forget ``task``'s class(es) from a copy of ``model`` by nullspace projection; return ``(model, record)``.

    The basis is spanned by ``task.templates`` over ``task.forget_classes``; ``val_forget = (dataset,
    indices)``: what the validation scores forgetting on (held-out synthetic images: data-free). The
    record's ``seconds`` / ``method_seconds`` time the basis and the projection (the method's whole cost).
    """
    release_memory()
    unlearned = copy.deepcopy(model)
    names = [task.classnames[c] if isinstance(c, int) else c for c in task.forget_classes]
    with metrics.measure_run(device=device) as cost:
        basis = build_text_basis(unlearned, tokenizer, names, task.templates, device=device)
        project_image_tower(unlearned, build_projection(basis, alpha))
    unlearned.eval()
    val = harness.validate_model(unlearned, task, tokenizer=tokenizer, device=device, forget_data=val_forget)
    test = harness.evaluate_model(unlearned, task, tokenizer=tokenizer, device=device) if evaluate else {}
    record = harness.summarise_run(task, method="nullspace",
                                   config={"alpha": alpha, "data_free": True, "rank": int(basis.shape[1]),
                                           **(config or {})}, test_metrics=test, cost=cost, val=val)
    record["metrics"].update(method_seconds=record["metrics"].get("seconds"), failed=False)
    return unlearned, record


register_procedure("nullspace", label="Nullspace projection", data_free=True, in_explorer=False)
