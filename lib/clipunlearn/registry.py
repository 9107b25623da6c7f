"""The one method registry: every unlearning method, its loss or runner, and what the repo shows of it.

Imports nothing of the package, so every layer may read it: the loop looks losses up here,
the harness asks whether a method needs the class prompts, the explorer offers what is
registered with ``explore``, the report takes its labels and display order from here.

Two kinds of method:

- ``"loss"``: one loss through the shared loop (``unlearning.unlearn``), registered by decorating
  the loss function (``losses.py``). Adding one is this decorator plus its selection grid in
  ``configs/mini.json`` (``grids``); the harness, the benchmark, the explorer and the report then know it.
- ``"procedure"``: a method with its own schedule (paper B's Lipschitz forgetting, paper A's three
  stages), registered by its module with ``run`` / ``explore`` callables.

The registry keeps registration order: the report lists methods in it (baselines, then the papers').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["MethodSpec", "METHODS", "LOSSES", "KINDS", "register_method", "register_loss", "register_procedure",
           "register_label", "get_method", "get_loss", "method_names", "method_label", "method_labels"]

KINDS = ("loss", "procedure")


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``loss``: ``loss(model, original, forget_batch, retain_batch, **kwargs) -> (loss, logs)`` (kind
    ``"loss"``); ``explore``: ``explore(task, *, model, tokenizer, lr, steps, batch_size, seed, device)
    -> (model, record)``, how the explorer runs a procedure (None: the explorer leaves it out);
    ``data_free``: the method never sees a real forget image (its selection neither);
    ``needs_class_texts``: the loss classifies forget images over every class prompt (``class_texts``).
    """

    name: str
    label: str
    kind: str = "loss"
    loss: Callable | None = None
    explore: Callable | None = None
    data_free: bool = False
    needs_class_texts: bool = False
    in_explorer: bool = True

    @property
    def explorable(self) -> bool:
        """True when the explorer can run it: a loss, or a procedure with an ``explore`` runner."""
        return self.in_explorer and (self.kind == "loss" or self.explore is not None)


#: name -> MethodSpec, in registration order
METHODS: dict[str, MethodSpec] = {}
#: name -> loss function of every ``"loss"`` method (what ``unlearning.unlearn`` runs)
LOSSES: dict[str, Callable] = {}
#: labels of names that are not methods of their own (ablation variants, the untouched model)
_EXTRA_LABELS: dict[str, str] = {"original": "original"}


def _add(spec: MethodSpec) -> MethodSpec:
    if spec.kind not in KINDS:
        raise ValueError(f"unknown method kind {spec.kind!r}; valid: {', '.join(KINDS)}")
    if spec.name in METHODS or spec.name in _EXTRA_LABELS:
        raise ValueError(f"method {spec.name!r} is already registered; pick another name")
    METHODS[spec.name] = spec
    if spec.kind == "loss":
        LOSSES[spec.name] = spec.loss
    return spec


def register_method(name: str, *, label: str | None = None, needs_class_texts: bool = False, data_free: bool = False,
                    in_explorer: bool = True) -> Callable:
    """Decorator: register a loss function as unlearning method ``name`` (the function is returned unchanged)."""

    def wrap(fn: Callable) -> Callable:
        _add(MethodSpec(name=name, label=label or name, kind="loss", loss=fn, data_free=data_free,
                        needs_class_texts=needs_class_texts, in_explorer=in_explorer))
        fn.loss_name = name
        return fn

    return wrap


def register_loss(name: str) -> Callable:
    """Decorator: register a loss under ``name`` with default metadata (label = name); see :func:`register_method`."""
    return register_method(name)


def register_procedure(name: str, *, label: str, explore: Callable | None = None, data_free: bool = False,
                       in_explorer: bool = True) -> MethodSpec:
    """Register a procedure method (its own schedule, not one loss through the loop)."""
    return _add(MethodSpec(name=name, label=label, kind="procedure", explore=explore, data_free=data_free,
                           in_explorer=in_explorer))


def register_label(name: str, label: str) -> None:
    """Give a display label to a record name that is not a method of its own (an ablation variant)."""
    if name in METHODS:
        raise ValueError(f"{name!r} is a registered method; its label is set when it is registered")
    _EXTRA_LABELS[name] = label


def unregister(name: str) -> None:
    """Remove ``name`` (a test's toy method)."""
    METHODS.pop(name, None)
    LOSSES.pop(name, None)
    _EXTRA_LABELS.pop(name, None)


def get_method(name: str) -> MethodSpec:
    """Return the registered method ``name``; a ValueError lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def get_loss(name: str) -> Callable:
    """Return the loss of the registered loss method ``name``; a ValueError lists the valid names."""
    if name not in LOSSES:
        raise ValueError(f"unknown unlearning method {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def method_names(*, kind: str | None = None, explorable: bool | None = None) -> list[str]:
    """Return the registered names in registration order, of one ``kind`` / explorer availability if given."""
    return [n for n, s in METHODS.items() if (kind is None or s.kind == kind)
            and (explorable is None or s.explorable == explorable)]


#: Reference models, shown before the methods: the untouched model and the retrained gold standard.
REFERENCES = ("original", "retrain")


def method_labels() -> dict[str, str]:
    """Return ``{name: label}``: the references first (:data:`REFERENCES` with a label), then the methods in
    registration order, then variants."""
    refs = {n: _EXTRA_LABELS[n] for n in REFERENCES if n in _EXTRA_LABELS}
    return {**refs, **{n: s.label for n, s in METHODS.items()},
            **{n: v for n, v in _EXTRA_LABELS.items() if n not in refs}}


def method_label(name: str) -> str:
    """Return the display name of ``name`` (``"neggrad_plus"`` -> ``"NegGrad+"``); unknown names as they are."""
    return method_labels().get(name, name)
