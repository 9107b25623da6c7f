"""An interactive explorer: forget a class or a subgroup of the mini CLIP and look before / after.

Plain functions do the work, so they run headless and in tests:

* :func:`load_world` loads the model and the data once (:class:`World`);
* :func:`run_explorer` runs one :class:`ExplorerConfig` (task kind, target, method,
  learning rate, steps) through the shared harness (``experiment.build_task``,
  ``experiment.run_method``, ``experiment.evaluate_model``) and returns an
  :class:`ExplorerResult`: the records of the untouched model and of the run, and
  example test images with their top predictions before and after;
* :func:`summary_table`, :func:`examples_table` and :func:`plot_result` show it
  (``plots.plot_per_class``, ``plots.plot_forget_confusion`` on the two records).

:func:`build_explorer_ui` wraps them in ipywidgets (dropdowns, sliders, a run
button) for notebook 50; ipywidgets is imported only there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch

from . import data, experiment, metrics, models, plots
from .configs import mini_settings
from .registry import get_method, method_names
from .report import metric_label

__all__ = ["DEFAULT_TARGETS", "default_lr", "ExplorerConfig", "World", "ExplorerResult",
           "available_methods", "target_choices", "check_config", "load_world", "run_explorer", "summary_table",
           "examples_table", "plot_examples", "plot_result", "ExplorerUI", "build_explorer_ui"]

#: A sensible first target per task kind.
DEFAULT_TARGETS = {"forget-class": "sneaker", "forget-subgroup": "sandal", "forget-style-subgroup": "sketch:sneaker"}
#: Metrics of the summary table, in order.
SUMMARY_METRICS = ("forget_acc", "sibling_acc", "retain_acc", "other_acc", "other_forget_acc", "mia")

@dataclass
class ExplorerConfig:
    """One explorer run: the task, the method and its main hyper-parameters, the evaluation size.

    ``steps`` is the number of optimiser steps of a registered loss, the number of
    epochs (``max_epochs``) of ``lipschitz_synthetic`` and the forget-stage steps of
    ``three_stage``. ``eval_per_class`` / ``retain_per_class`` cap the test images and
    the retain training pairs per class; ``n_examples`` images per example row.
    """

    kind: str = "forget-class"
    target: str = "sneaker"
    method: str = "cliperase"
    lr: float = 1e-4
    steps: int = 20
    batch_size: int = 32
    seed: int = 0
    eval_per_class: int = 100
    retain_per_class: int = 100
    n_examples: int = 6

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class World:
    """What every run shares: the model, its tokenizer, the train / test sets and a cache of evaluations."""

    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    train: object = field(repr=False)
    test: object = field(repr=False)
    templates: tuple = data.FASHION_MNIST_TEMPLATES
    n_seen: int | None = None
    device: str = "cpu"
    cache: dict = field(default_factory=dict, repr=False)  # (task key) -> record of the untouched model

    @property
    def classnames(self) -> list[str]:
        return list(self.train.classnames)

    @property
    def stylenames(self) -> list[str]:
        return list(getattr(self.train, "stylenames", []) or [])


@dataclass
class ExplorerResult:
    """The outcome of :func:`run_explorer`.

    ``original`` / ``record``: result records (``docs/RESULTS.md``) of the untouched
    model and of the run; ``examples``: ``{"rows": [name], "images": [R, C, 3, H, W],
    "labels": [[true class]], "before": [[[(class, prob) x top_k]]], "after": ...}``;
    ``mean`` / ``std`` (pixel normalisation of the images); ``model``: the unlearned model.
    """

    config: ExplorerConfig
    original: dict
    record: dict
    examples: dict = field(repr=False)
    seconds: float = 0.0
    model: object = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return bool(self.record["metrics"].get("failed"))


# --------------------------------------------------------------------------- #
# Choices and checks
# --------------------------------------------------------------------------- #
def available_methods() -> list[str]:
    """Return the methods the explorer can run: every registered method with ``explorable`` set (the registry's order)."""
    return method_names(explorable=True)


def default_lr(method: str) -> float:
    """Return ``method``'s starting learning rate: the middle of its mini-profile grid (``configs/mini.json``)."""
    grid = sorted(mini_settings()["grids"][get_method(method).name]["lr"])
    return grid[len(grid) // 2]


def target_choices(kind: str, *, classnames: Sequence[str], stylenames: Sequence[str] = ()) -> list[str]:
    """Return the valid targets of ``kind``: every class, the classes with siblings, or ``style:class``."""
    if kind not in experiment.TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; valid: {', '.join(experiment.TASK_KINDS)}")
    if kind == "forget-class":
        return list(classnames)
    if kind == "forget-subgroup":
        return [c for c in classnames if c in data.FASHION_MNIST_CLASSES
                and len(data.FASHION_MNIST_HIERARCHY[data.coarse_of(c)]) > 1]
    return [f"{s}:{c}" for s in stylenames if s != "photo" for c in classnames]


def check_config(config: ExplorerConfig, *, world: World | None = None) -> ExplorerConfig:
    """Return ``config`` if it can run; otherwise raise a ValueError that lists the valid values."""
    if config.method not in available_methods():
        raise ValueError(f"unknown method {config.method!r}; valid: {', '.join(available_methods())}")
    if world is not None:
        valid = target_choices(config.kind, classnames=world.classnames, stylenames=world.stylenames)
        if config.target not in valid:
            raise ValueError(f"{config.target!r} is not a {config.kind} target; valid: {', '.join(valid)}")
    elif config.kind not in experiment.TASK_KINDS:
        raise ValueError(f"unknown task kind {config.kind!r}; valid: {', '.join(experiment.TASK_KINDS)}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"lr must be a positive number, got {config.lr!r}")
    for name in ("steps", "batch_size", "eval_per_class", "retain_per_class", "n_examples"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)!r}")
    return config


# --------------------------------------------------------------------------- #
# Running
# --------------------------------------------------------------------------- #
def load_world(*, device="cpu", data_dir=None, model_name: str = "mini", progress: bool = False) -> World:
    """Load the cached mini CLIP (``models.get_mini_clip``, trained on first use) and Fashion-MNIST in every style."""
    model, _, tokenizer, _ = models.get_mini_clip(model_name, device=device, progress=progress, data_dir=data_dir)
    train, test = data.load_mini_world(data_dir=data_dir)
    return World(model=model, tokenizer=tokenizer, train=train, test=test, templates=data.FASHION_MNIST_TEMPLATES,
                 n_seen=models.MINI_SEEN_IMAGES, device=str(device))


def _build_task(config: ExplorerConfig, world: World) -> experiment.Task:
    return experiment.build_task(world.train, world.test, kind=config.kind, target=config.target, seed=config.seed,
                                 templates=world.templates, retain_per_class=config.retain_per_class,
                                 eval_per_class=config.eval_per_class, val_per_class=min(50, config.eval_per_class),
                                 members_limit=config.eval_per_class, n_seen=world.n_seen)


def _run(task, config: ExplorerConfig, world: World):
    """Run ``config.method`` on ``task`` through the registry; return ``(unlearned model, record)``."""
    spec = get_method(config.method)
    if spec.kind == "loss":
        return experiment.run_method(config.method, task, model=world.model, tokenizer=world.tokenizer, lr=config.lr,
                                     steps=config.steps, batch_size=config.batch_size, device=world.device)
    return spec.explore(task, model=world.model, tokenizer=world.tokenizer, lr=config.lr, steps=config.steps,
                        batch_size=config.batch_size, seed=config.seed, device=world.device)


def _examples(task, *, models: dict, world: World, n: int, top_k: int = 3) -> dict:
    """Top-``top_k`` predictions of every model in ``models`` on ``n`` images of the forget subset and of
    the sibling (subgroup tasks) or retain subset."""
    rows = ["forget", "sibling" if "sibling" in task.eval_sets else "retain"]
    styles = getattr(task.test, "styles", None)
    n_styles = len(task.test.stylenames) if styles is not None else 1
    n = min([n] + [len(task.eval_sets[r]) for r in rows])
    picked = {}
    for row in rows:
        # one image per class and style in turn (rows show every class / style); the same images every run
        idx = task.eval_sets[row]
        group = task.test.targets[idx] * n_styles + (styles[idx] if styles is not None else 0)
        rank = torch.empty_like(group)
        for g in group.unique():
            rank[group == g] = torch.arange(int((group == g).sum()))
        picked[row] = idx[sorted(range(len(idx)), key=lambda i: (int(rank[i]), int(group[i])))[:n]]
    images = torch.stack([task.test.get_batch(picked[r])[0] for r in rows])
    labels = [[task.classnames[int(y)] for y in task.test.targets[picked[r]]] for r in rows]
    norm = {k: tuple(torch.as_tensor(getattr(task.test, k, default)).flatten().tolist())
            for k, default in (("mean", data.MINI_MEAN), ("std", data.MINI_STD))}
    out = {"rows": rows, "images": images, "labels": labels, "indices": {r: picked[r].tolist() for r in rows}, **norm}
    for name, model in models.items():
        clf = metrics.build_classifier(model, world.tokenizer, task.classnames, task.templates, device=world.device)
        preds = []
        for row in rows:
            logits, _ = metrics.predict_logits(model, clf, task.test, indices=picked[row], device=world.device)
            probs, top = logits.softmax(1).topk(min(top_k, logits.shape[1]), dim=1)
            preds.append([[(task.classnames[int(c)], float(p)) for c, p in zip(tc, tp)]
                          for tc, tp in zip(top, probs)])
        out[name] = preds
    return out


def run_explorer(config: ExplorerConfig, *, world: World) -> ExplorerResult:
    """Run one configuration on ``world`` and return an :class:`ExplorerResult`.

    The untouched model's record is computed once per task and cached in
    ``world.cache``; the method runs on a fresh copy (``world.model`` is not changed).
    """
    check_config(config, world=world)
    start = time.perf_counter()
    task = _build_task(config, world)
    key = (config.kind, config.target, config.seed, config.eval_per_class, config.retain_per_class)
    if key not in world.cache:
        world.cache[key] = experiment.record_original({task.target: [task]}, model=world.model,
                                                      tokenizer=world.tokenizer, device=world.device)[task.target]
    original = world.cache[key]
    model, record = _run(task, config, world)
    record["config"]["explorer"] = config.to_dict()
    examples = _examples(task, models={"before": world.model, "after": model}, world=world, n=config.n_examples)
    return ExplorerResult(config=config, original=original, record=record, examples=examples,
                          seconds=time.perf_counter() - start, model=model)


# --------------------------------------------------------------------------- #
# Showing
# --------------------------------------------------------------------------- #
def summary_table(result: ExplorerResult):
    """Return a DataFrame: one row per test metric, columns ``before`` / ``after`` / ``change``."""
    rows = []
    for name in SUMMARY_METRICS:
        before, after = result.original["metrics"].get(name), result.record["metrics"].get(name)
        if before is None and after is None:
            continue
        change = after - before if isinstance(before, float) and isinstance(after, float) else None
        rows.append({"metric": f"{name} ({metric_label(name)})", "before": before, "after": after,
                     "change": change})
    frame = pd.DataFrame(rows).set_index("metric")
    return frame.round(3)


def examples_table(result: ExplorerResult):
    """Return a DataFrame of the example images: true class and top predictions before and after."""
    ex = result.examples
    fmt = lambda preds: ", ".join(f"{c} {p:.2f}" for c, p in preds)
    rows = [{"row": row, "true": ex["labels"][r][c], "before": fmt(ex["before"][r][c]), "after": fmt(ex["after"][r][c])}
            for r, row in enumerate(ex["rows"]) for c in range(len(ex["labels"][r]))]
    return pd.DataFrame(rows)


def plot_examples(result: ExplorerResult):
    """Plot the example images, titled with the true class and the top prediction before and after."""
    ex = result.examples
    titles = [f"{ex['labels'][r][c]}\nbefore: {ex['before'][r][c][0][0]} {ex['before'][r][c][0][1]:.2f}\n"
              f"after: {ex['after'][r][c][0][0]} {ex['after'][r][c][0][1]:.2f}"
              for r in range(len(ex["rows"])) for c in range(len(ex["labels"][r]))]
    fig = plots.plot_image_grid(ex["images"], row_labels=ex["rows"], titles=titles, mean=ex["mean"], std=ex["std"],
                                cell=1.7)
    fig.suptitle(f"{result.config.method} on {result.config.kind} {result.config.target!r}: example test images",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_result(result: ExplorerResult) -> dict:
    """Return the figures of a run: per-class bars, the forget confusion rows, the validation curve, examples.

    ``{"per_class", "confusion", "curve" (when the run has a validation history), "examples"}``.
    """
    records = [result.original, result.record]
    kind, target = result.config.kind, result.config.target
    figures = {}
    try:
        figures["per_class"] = plots.plot_per_class(records, forget_class=target, task=kind)
    except plots.NoDataError:
        pass
    try:
        figures["confusion"] = plots.plot_forget_confusion(records, forget_class=target, task=kind)
    except plots.NoDataError:
        pass
    history = [h for h in result.record.get("history", []) if "val_forget_acc" in h]
    if len(history) > 1:
        figures["curve"] = plots.plot_curves(history, x="step", ys=["val_forget_acc", "val_retain_acc"],
                                             title=f"{result.config.method}: validation accuracy while unlearning",
                                             ylabel="accuracy")
    figures["examples"] = plot_examples(result)
    return figures


# --------------------------------------------------------------------------- #
# The widget UI
# --------------------------------------------------------------------------- #
@dataclass
class ExplorerUI:
    """The explorer's widgets: ``widget`` (display it), ``controls`` by name, ``output``, and every ``results``.

    ``fixed``: the configuration fields without a control (batch size, evaluation sizes).
    """

    widget: object
    controls: dict
    output: object
    fixed: dict = field(default_factory=dict)
    results: list = field(default_factory=list)

    def config(self) -> ExplorerConfig:
        """Return the configuration the controls describe."""
        c = self.controls
        return ExplorerConfig(kind=c["kind"].value, target=c["target"].value, method=c["method"].value,
                              lr=float(c["lr"].value), steps=int(c["steps"].value), seed=int(c["seed"].value),
                              **self.fixed)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _show(result: ExplorerResult) -> None:
    """Display a result in the current output (a notebook cell or an Output widget)."""
    import matplotlib.pyplot as plt  # lazy: matplotlib loads with the first figure (the CLI picks its backend first)
    from IPython.display import display  # notebook-only dependency

    rec = result.record["metrics"]
    status = "FAILED (non-finite loss)" if result.failed else f"best step {rec.get('best_step', '-')}"
    print(f"{result.config.method} on {result.config.kind} {result.config.target!r}: lr {result.config.lr:g}, "
          f"{result.config.steps} steps, {status}, {result.seconds:.1f} s")
    display(summary_table(result))
    for fig in plot_result(result).values():
        display(fig)
        plt.close(fig)


def build_explorer_ui(world: World, *, initial: ExplorerConfig | None = None,
                      run_fn: Callable[..., ExplorerResult] = run_explorer,
                      show_fn: Callable[[ExplorerResult], None] = _show) -> ExplorerUI:
    """Return the explorer's widgets: task kind, target, method, lr, steps, seed and a run button.

    Pressing the button runs ``run_fn(config, world=world)`` and shows the result
    with ``show_fn`` in the output area (an error is shown there, not raised).
    Changing the kind updates the target list; changing the method resets lr to
    its default (:func:`default_lr`).
    """
    try:
        import ipywidgets as w  # notebook-only dependency
    except ImportError as err:
        raise ImportError("the explorer's UI needs ipywidgets: pip install -c constraints.txt -e '.[notebooks]' "
                          "(run_explorer and plot_result work without it)") from err

    initial = check_config(initial or ExplorerConfig(), world=world)
    style = {"description_width": "70px"}
    kind = w.Dropdown(options=list(experiment.TASK_KINDS), value=initial.kind, description="task", style=style)
    target = w.Dropdown(options=target_choices(initial.kind, classnames=world.classnames,
                                               stylenames=world.stylenames),
                        value=initial.target, description="target", style=style)
    method = w.Dropdown(options=available_methods(), value=initial.method, description="method", style=style)
    lr = w.FloatLogSlider(value=initial.lr, base=10, min=-6, max=-1, step=0.25, readout_format=".1e",
                          description="lr", style=style)
    steps = w.IntSlider(value=initial.steps, min=1, max=100, description="steps", style=style)
    seed = w.IntText(value=initial.seed, description="seed", style=style, layout=w.Layout(width="160px"))
    button = w.Button(description="run", button_style="primary", icon="play")
    status = w.Label(value="")
    output = w.Output()
    controls = {"kind": kind, "target": target, "method": method, "lr": lr, "steps": steps, "seed": seed,
                "run": button, "status": status}

    def on_kind(change):
        options = target_choices(change["new"], classnames=world.classnames, stylenames=world.stylenames)
        default = DEFAULT_TARGETS.get(change["new"])
        target.options = options
        target.value = default if default in options else options[0]

    def on_method(change):
        lr.value = default_lr(change["new"])

    kind.observe(on_kind, names="value")
    method.observe(on_method, names="value")
    widget = w.VBox([w.HBox([kind, target, method]), w.HBox([lr, steps, seed]), w.HBox([button, status]), output])
    fixed = {k: v for k, v in initial.to_dict().items() if k not in controls}
    ui = ExplorerUI(widget=widget, controls=controls, output=output, fixed=fixed)

    def on_run(_):
        button.disabled = True
        status.value = "running..."
        output.clear_output()
        try:
            config = ui.config()
            result = run_fn(config, world=world)
            ui.results.append(result)
            status.value = f"done in {result.seconds:.1f} s"
            with output:
                show_fn(result)
        except Exception as err:  # shown to the user, who can change the settings and retry
            status.value = f"error: {err}"
            with output:
                print(f"{type(err).__name__}: {err}")
        finally:
            button.disabled = False

    button.on_click(on_run)
    return ui
