"""The one selection protocol: a grid searched on a selection seed, the reported seeds at the chosen values.

:data:`PROTOCOL` is the protocol every notebook uses (:class:`Selection`): the grid is searched on
:data:`SELECTION_SEED`, a seed that is never reported, and extended while its choice sits at an end
(:class:`GridExtension`). :func:`run_grid` runs a method over a small grid and keeps the best candidate by
:func:`~clipunlearn.scores.selection_score` (ties: the first candidate, with an extension the smallest
value); :func:`run_selected` searches and runs the reported seeds with the selected values, saving every
record to a :class:`~clipunlearn.harness.store.ResultStore` as it comes. Without a protocol (``selection=None``)
the grid is searched on the first task's seed, which is then reported too (earlier releases' records).
:func:`summarise_run` builds the result record of one run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from ..clip import release_memory
from ..results import make_record
from ..scores import CRITERION, round_score
from .executor import RunCall, SerialExecutor, make_spec
from .task import Task

__all__ = ["EVALUATIONS", "PROTOCOL", "QUICK_PROTOCOL", "SELECTION_SEED", "GridExtension", "Selection", "is_search",
           "reported_tasks", "run_grid", "run_selected", "find_selection_task", "protocol_for", "summarise_run"]

#: The seed every grid is searched on; never among the reported seeds.
SELECTION_SEED = 100
#: Validation passes of every loss-based run (``run_method`` evaluates every ``steps // EVALUATIONS`` steps).
EVALUATIONS = 10


@dataclass(frozen=True)
class GridExtension:
    """How :func:`run_grid` extends a one-parameter grid whose choice lands on an end.

    One more value beyond that end, the next power of ``factor`` (10 ** 0.5: half a decade, so 1e-3,
    3.16e-3, 1e-2, ...; three significant digits), until the choice is interior or the next value
    would leave ``bounds`` (inclusive). With an extension, ties go to the smallest value (the
    gentlest learning rate).
    """

    name: str = "lr"
    factor: float = 10 ** 0.5
    bounds: tuple[float, float] = (1e-7, 1e-1)

    def next_value(self, values: Sequence[float], chosen: float) -> tuple[float | None, str]:
        """Return ``(value to try next or None, where the choice sits)``: ``"interior"``, ``"lower edge"``,
        ``"upper edge"`` (a value is left to try) or ``"lower bound"`` / ``"upper bound"`` (none is)."""
        values = sorted(values)
        if len(values) > 1 and values[0] < chosen < values[-1]:
            return None, "interior"
        side = "lower" if chosen == values[0] else "upper"
        step = math.log10(self.factor)  # the lattice of powers of factor, so that rounding does not drift
        k = round(math.log10(values[0] if side == "lower" else values[-1]) / step) + (-1 if side == "lower" else 1)
        nxt = float(f"{10 ** (k * step):.3g}")
        lo, hi = self.bounds
        if not lo * (1 - 1e-9) <= nxt <= hi * (1 + 1e-9):
            return None, f"{side} bound"
        return nxt, f"{side} edge"


@dataclass(frozen=True)
class Selection:
    """A selection protocol: the seed the grid is searched on and how the grid grows.

    ``seed``: the selection seed (its task is searched, never reported); ``extend``: the
    :class:`GridExtension` of a one-parameter grid (None: the grid as given).
    """

    seed: int = SELECTION_SEED
    extend: GridExtension | None = GridExtension()

    def with_seeds(self, seeds: Sequence[int]) -> list[int]:
        """Return ``[self.seed, *seeds]``: the seeds to build tasks for; a reported seed equal to it is refused."""
        if self.seed in seeds:
            raise ValueError(f"seed {self.seed} is the selection seed (grids are searched on it, never reported); "
                             f"pick reported seeds without it, got {list(seeds)}")
        return [self.seed, *seeds]


#: The protocol of every notebook: grids searched on :data:`SELECTION_SEED`, extended at their ends.
PROTOCOL = Selection()
#: The notebooks' quick mode (the CI smoke test): the same seeds, the grids as given (no extension).
QUICK_PROTOCOL = Selection(extend=None)


def protocol_for(seeds: Sequence[int], *, quick: bool = False) -> Selection:
    """Return the notebooks' protocol (:data:`QUICK_PROTOCOL` in quick mode, else :data:`PROTOCOL`) after
    checking that no reported seed in ``seeds`` is its selection seed (:meth:`Selection.with_seeds`)."""
    protocol = QUICK_PROTOCOL if quick else PROTOCOL
    protocol.with_seeds(seeds)
    return protocol


def find_selection_task(tasks: Sequence[Task], selection: Selection | None) -> Task | None:
    """Return the task of ``selection.seed`` among ``tasks`` (None without a protocol); a clear error if absent."""
    if selection is None:
        return None
    found = [t for t in tasks if t.seed == selection.seed]
    if not found:
        raise ValueError(f"no task of the selection seed {selection.seed} among seeds {[t.seed for t in tasks]}: "
                         "build the tasks for Selection.with_seeds(seeds)")
    return found[0]


def is_search(task: Task, selection: Selection | None) -> bool:
    """Return whether ``task`` is the selection seed's (its runs are only scored on validation images, so a
    driver may skip their test evaluation)."""
    return selection is not None and task.seed == selection.seed


def reported_tasks(tasks: Sequence[Task], selection: Selection | None) -> list[Task]:
    """Return the tasks whose results are reported: all of ``tasks`` but the selection seed's."""
    return [t for t in tasks if selection is None or t.seed != selection.seed]


def summarise_run(task: Task, *, method: str, config: dict, test_metrics: dict, cost: dict | None = None,
                  history: Sequence[dict] = (), val: dict | None = None, **extra) -> dict:
    """Return a result record of one run (``config`` gets the task fields; ``metrics`` the test numbers)."""
    config = {"task": task.kind, "forget_class": task.target, "seed": task.seed, "criterion": CRITERION,
              **config}
    m = {**test_metrics, **(cost or {}), **(val or {})}
    return make_record(method=method, task=task.kind, config=config, metrics=m, history=list(history), **extra)


def _run_candidates(run_fn, candidates: list[dict], placed) -> Iterator[tuple[object, dict]]:
    """Yield ``(model, record)`` of every candidate, in order: ``run_fn(**candidate)`` here, one at a time, or
    through ``placed = (executor, task, task_run_fn, remote)`` (a whole batch submitted at once)."""
    if placed is None:
        for candidate in candidates:
            yield run_fn(**candidate)
        return
    executor, task, task_run_fn, remote = placed
    calls = [RunCall(task, c, False, make_spec(remote, task, c, reported=False)) for c in candidates]
    for _, model, record in executor.run(calls, run_fn=task_run_fn, ordered=True):
        yield model, record


def run_grid(run_fn: Callable[..., tuple], *, grid: dict[str, Sequence], score_key: str = "score",
             oracle_fn: Callable[[object], dict] | None = None,
             extend: GridExtension | None = None, placed=None) -> tuple[object, dict, list[dict]]:
    """Run ``run_fn(**candidate)`` for every candidate of ``grid``; keep the best by validation score.

    ``grid``: ``{name: values}`` (the product is taken; keep it small). ``run_fn``
    returns ``(model, record)``; candidates are ranked by ``record["metrics"][score_key]``
    (the validation :func:`selection_score` at the kept step); failed runs rank last.
    Returns ``(best_model, best_record, candidates)``, where ``candidates`` are
    ``{**candidate, "score", "val_forget_acc", "val_retain_acc", "failed", "selected"}``
    rows (plus ``oracle_score`` from ``oracle_fn(model)`` when given — a reference that
    peeks at data the method may not use, never used for the choice). The best record
    gets ``config.grid`` and ``config.selected``; the other models are released.

    ``extend`` (a :class:`GridExtension`, one-parameter grids): while the choice sits at an end of
    the grid, one more value beyond it is run, up to the extension's bounds; ``config.grid`` is then
    the final grid (ascending) and ``config.edge`` says where the choice sits (``{name: "interior"}``,
    or ``"lower bound"`` / ``"upper bound"`` when the grid could not go further).

    ``placed`` (``(executor, task, run_fn(task, **candidate), remote)``, from :func:`run_selected`): the
    candidates of the grid run through an executor (``harness.executor``; a remote one runs them at once and
    returns no model), each extension step after them.
    """
    names = list(grid)
    if extend is not None and names != [extend.name]:
        raise ValueError(f"a grid extension needs a grid over {extend.name!r} alone, got {names}")
    if extend is not None and list(grid[extend.name]) != sorted(grid[extend.name]):
        raise ValueError("an extended grid lists its values ascending (the gentlest first), got "
                         f"{list(grid[extend.name])}")
    best_model, best_record, rows = None, None, []
    candidates = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    for candidate, (model, record) in zip(candidates, _run_candidates(run_fn, candidates, placed)):
        score, row = _row(candidate, model, record, score_key=score_key, oracle_fn=oracle_fn)
        rows.append(row)
        if best_record is None or score > best_record["_score"]:  # ties: the earlier candidate
            best_model, best_record = model, dict(record, _score=score)
        else:
            del model
        release_memory()
    final = {n: list(grid[n]) for n in names}
    if extend is not None:
        best_model, best_record, edge = _extend(run_fn, rows, best_model, best_record, extend=extend,
                                                score_key=score_key, oracle_fn=oracle_fn, placed=placed)
        final = {extend.name: sorted(r[extend.name] for r in rows)}
    best_record.pop("_score")
    for row in rows:
        row["selected"] = row["record"] is best_record or all(row.get(n) == best_record["config"].get(n)
                                                               for n in names)
    best_record["config"]["grid"] = final
    best_record["config"]["selected"] = {n: best_record["config"].get(n) for n in names}
    if extend is not None:
        best_record["config"]["edge"] = {extend.name: edge}
    return best_model, best_record, rows


def _row(candidate: dict, model, record: dict, *, score_key: str, oracle_fn) -> tuple[float, dict]:
    """The grid row of one candidate and its score (rounded: float noise decides nothing; failed: -inf)."""
    m = record["metrics"]
    score = -math.inf if m.get("failed") else float(m.get(score_key, -math.inf))
    score = score if math.isinf(score) else round_score(score)
    row = {**candidate, "score": score, "val_forget_acc": m.get("val_forget_acc"),
           "val_retain_acc": m.get("val_retain_acc"), "failed": bool(m.get("failed")), "record": record}
    if oracle_fn is not None:
        row["oracle"] = oracle_fn(model)
    return score, row


def _extend(run_fn, rows: list[dict], best_model, best_record: dict, *, extend: GridExtension, score_key: str,
            oracle_fn, placed=None) -> tuple[object, dict, str]:
    """Run values beyond the end the choice sits at (:class:`GridExtension`); return the new best and its edge."""
    name = extend.name
    while True:
        top, chosen = best_record["_score"], best_record["config"][name]  # records hold their candidate
        nxt, edge = extend.next_value([r[name] for r in rows], chosen)
        if nxt is None:
            return best_model, best_record, edge
        model, record = next(_run_candidates(run_fn, [{name: nxt}], placed))
        score, row = _row({name: nxt}, model, record, score_key=score_key, oracle_fn=oracle_fn)
        rows.append(row)
        if score > top or (score == top and nxt < chosen):
            best_model, best_record = model, dict(record, _score=score)
        else:
            del model
        release_memory()


def run_selected(method: str, tasks: Sequence[Task], *, run_fn: Callable[..., tuple], grid: dict[str, Sequence],
                 store=None, oracle_fn: Callable | None = None, keep_models: bool = False,
                 extend: GridExtension | None = None, selection_task: Task | None = None,
                 selection: Selection | None = None,
                 finish_fn: Callable[[object, dict, Task], None] | None = None, record_task: str | None = None,
                 match: dict | None = None, executor=None, remote: dict | None = None) -> list[dict]:
    """Run ``method`` on ``tasks`` (one forget target, several seeds) with one selection protocol.

    The grid is searched on the first task (its seed's validation split, by
    :func:`selection_score`); the other seeds run with the selected values. ``run_fn(task,
    **candidate) -> (model, record)`` runs one candidate. Returns the result records (one
    per seed, ``config.grid`` / ``config.selected`` filled) followed by the ``selection``
    records of the grid (one per candidate, ``config.selected`` true/false, and an
    ``oracle_score`` where ``oracle_fn`` is given). With ``store`` (a :class:`ResultStore`)
    every record is saved as soon as it exists and finished runs are not repeated. ``extend``: see
    :func:`run_grid`; every seed's record then holds the final grid and where the choice sits.

    ``selection_task``: search the grid on this task instead (a selection seed that is not reported):
    every task of ``tasks`` then runs at the chosen values, the search's own runs are kept only as
    ``selection`` records (the chosen one holds the final grid, ``config.search_grid``), and every
    result says ``config.selected_on_seed``. ``selection`` (a :class:`Selection`, e.g. :data:`PROTOCOL`): the
    task of its seed among ``tasks`` is the selection task, and its extension is used. ``finish_fn(model,
    record, task)``: called on every reported run before it is saved (e.g. ``reference.reference_fn``'s
    distance to the retrained model), never on the search's runs. ``record_task`` (default: the task's kind)
    and ``match`` (config values, e.g. ``{"variant": "FM"}``) say which stored records are this search's
    and results (an ablation variant's or a forget ratio's, whose ``run_fn`` sets them on its records).

    ``executor`` (``harness.executor``; None: one run after the other here, as always): where the runs go. A
    concurrent one (``cluster.RayExecutor``) takes the grid's candidates at once, then every reported seed at
    once, each rebuilt elsewhere from its spec (``remote``: the world and the driver's settings, JSON), and every
    finished record is saved as it comes (a run that raised, ``metrics.error``, is saved too and run again on
    resume); it needs a selection seed (``selection`` or ``selection_task``), whose
    search is never reported, and no ``oracle_fn`` (the models stay on the workers).
    """
    if selection is not None:
        selection_task, extend = find_selection_task(tasks, selection), selection.extend
        tasks = reported_tasks(tasks, selection)
    concurrent = getattr(executor, "concurrent", False)
    if concurrent and (selection_task is None or oracle_fn is not None):
        raise ValueError("a concurrent executor needs a selection seed that is not reported (selection=PROTOCOL) and "
                         "no oracle_fn (its models stay on the workers); run this search with executor=None")
    search = tasks[0] if selection_task is None else selection_task
    reported = list(tasks[1:]) if selection_task is None else list(tasks)
    kind, match = record_task or search.kind, dict(match or {})
    cached = store.find(method=method, task=kind, forget_class=search.target, seed=search.seed, **match) \
        if store is not None and selection_task is None else None
    sel_cached = store.find_all(method=method, task="selection", forget_class=search.target, seed=search.seed,
                                run_task=kind, **match) if store is not None else []
    if any(r["metrics"].get("error") for r in sel_cached):  # a candidate raised (not diverged): search again
        sel_cached = []
    if sel_cached and (cached is not None or selection_task is not None):
        search_records = sel_cached
        if selection_task is None:  # the search seed's own result holds the choice
            best = cached
            chosen, final, edge = best["config"]["selected"], best["config"]["grid"], best["config"].get("edge")
        else:  # the chosen selection record does
            best, picked = None, next(r["config"] for r in search_records if r["config"]["selected"])
            chosen, final, edge = picked, picked["search_grid"], picked.get("edge")
    else:
        model, best, rows = run_grid(lambda **c: run_fn(search, **c), grid=grid, extend=extend,
                                     oracle_fn=None if oracle_fn is None else (lambda m: oracle_fn(m, search)),
                                     placed=(executor, search, run_fn, remote) if concurrent else None)
        if finish_fn is not None and selection_task is None:  # the search seed is reported too
            finish_fn(model, best, search)
        del model
        chosen, final, edge = best["config"]["selected"], best["config"]["grid"], best["config"].get("edge")
        search_records = []
        for row in rows:
            rec = row["record"]
            cand = {k: row[k] for k in grid}
            m = {k: row[k] for k in ("score", "val_forget_acc", "val_retain_acc", "failed")}
            if "oracle" in row:
                m.update({f"oracle_{k}": v for k, v in row["oracle"].items()})
            m.update({k: rec["metrics"].get(k) for k in ("forget_acc", "retain_acc", "best_step")})
            if rec["metrics"].get("error"):  # the run raised on a worker: kept, and searched again on resume
                m["error"] = rec["metrics"]["error"]
            extra = {"search_grid": final} if selection_task is not None and row["selected"] else {}
            search_records.append(make_record(method=method, task="selection",
                                         config={**rec["config"], **cand, "run_task": kind,
                                                 "selected": bool(row["selected"]), "grid": None, **extra},
                                         metrics=m))
        if store is not None:
            store.add(*([best] if selection_task is None else []), *search_records)
    chosen = {k: chosen[k] for k in grid}

    def finish(rec: dict) -> dict:
        rec["config"]["grid"] = {k: list(v) for k, v in final.items()}
        rec["config"]["selected"] = dict(chosen)
        if edge is not None:
            rec["config"]["edge"] = dict(edge)
        rec["config"]["selected_on_seed"] = search.seed
        if store is not None:
            store.add(rec)
        return rec

    found = {}
    for task in reported:  # a stored record that raised (not diverged), or ran at another choice, is run again
        rec = store.find(method=method, task=kind, forget_class=task.target, seed=task.seed, **match) \
            if store else None
        stale = rec is not None and (rec["metrics"].get("error") or any(
            rec["config"].get(k) != v for k, v in chosen.items()))  # a search run again chose another value
        found[task.seed] = None if stale else rec
    todo = [task for task in reported if found[task.seed] is None]
    calls = [RunCall(task, chosen, True, make_spec(remote, task, chosen, reported=True,
                                                   finish=finish_fn is not None)) for task in todo]
    # here one after the other; a concurrent executor runs them at once: each record is saved as it finishes
    for i, _, rec in (executor or SerialExecutor()).run(calls, run_fn=run_fn, finish_fn=finish_fn, ordered=False):
        found[todo[i].seed] = finish(rec)
    return ([best] if selection_task is None else []) + [found[task.seed] for task in reported] + search_records
