"""The grid searched on a selection seed that is not reported: run_selected(selection_task=...)."""

from __future__ import annotations

from clipunlearn import experiment

from .test_mutation_kills_experiment import selected_runner, world  # noqa: F401  (world: a fixture)


def tasks_of(world, seeds, target="bag"):  # noqa: F811
    train, test = world
    return [experiment.build_task(train, test, target=target, seed=s, eval_per_class=2) for s in seeds]


def test_the_grid_is_searched_on_the_selection_seed_and_every_reported_seed_runs_at_the_choice(world):  # noqa: F811
    search, reported, calls = tasks_of(world, [7])[0], tasks_of(world, [0, 1, 2]), []
    out = experiment.run_selected("x", reported, run_fn=selected_runner(calls), grid={"lr": [1, 2]},
                                  selection_task=search)
    assert calls == [(7, 1), (7, 2), (0, 2), (1, 2), (2, 2)]  # lr 2 wins on seed 7; seeds 0-2 at lr 2 only
    results, selection = out[:3], out[3:]
    assert [r["config"]["seed"] for r in results] == [0, 1, 2]  # seed 7 is not a result
    for r in results:
        assert r["config"]["selected"] == {"lr": 2} and r["config"]["selected_on_seed"] == 7
        assert r["config"]["grid"] == {"lr": [1, 2]}
    assert [(s["task"], s["config"]["seed"], s["config"]["lr"], s["config"]["selected"]) for s in selection] == [
        ("selection", 7, 1, False), ("selection", 7, 2, True)]
    assert selection[1]["config"]["search_grid"] == {"lr": [1, 2]} and "search_grid" not in selection[0]["config"]


def test_resuming_keeps_the_choice_and_runs_only_what_is_missing(tmp_path, world):  # noqa: F811
    search, reported, calls = tasks_of(world, [7])[0], tasks_of(world, [0, 1]), []
    path = tmp_path / "r.json"
    store = experiment.ResultStore(path, match={"profile": "mini"})
    experiment.run_selected("x", reported, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, store=store,
                            selection_task=search)
    assert [r["config"]["seed"] for r in store.records if r["task"] != "selection"] == [0, 1]  # seed 7 not stored

    def resume(drop):
        again = experiment.ResultStore(path, match={"profile": "mini"}, resume=True)
        again.records = [r for r in again.records if not drop(r)]
        calls.clear()
        return experiment.run_selected("x", reported, run_fn=selected_runner(calls), grid={"lr": [1, 2]},
                                       store=again, selection_task=search)

    out = resume(lambda r: False)
    assert calls == [] and [r["config"]["seed"] for r in out[:2]] == [0, 1]
    out = resume(lambda r: r["task"] != "selection" and r["config"]["seed"] == 1)  # a result lost: only it reruns
    assert calls == [(1, 2)] and out[1]["config"]["selected_on_seed"] == 7 and out[1]["config"]["grid"] == {
        "lr": [1, 2]}
    resume(lambda r: r["task"] == "selection")  # the search lost: it reruns on seed 7, the results are kept
    assert calls == [(7, 1), (7, 2)]
