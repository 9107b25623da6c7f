"""The attacks (harness/attacks.py) and the attack benchmark (papers/attacks_bench.py) on a tiny CLIP and world."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clipunlearn import data, findings, harness, plots
from clipunlearn.harness import attacks
from clipunlearn.papers import attacks_bench
from clipunlearn.results import make_record
from clipunlearn.unlearning import make_pair_loader

from .test_experiment import tiny_world


@pytest.fixture
def task():
    train, test = tiny_world(seed=0), tiny_world(n_per_class=12, seed=1)
    return harness.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0, retain_per_class=4,
                              eval_per_class=4, val_per_class=2)


def settings(tokenizer, **kw):
    return attacks.AttackSettings(tokenizer=tokenizer, **{**dict(retain_steps=(1, 2), forget_sizes=(2,),
                                                                   forget_steps=(1,), probe_per_class=3,
                                                                   measure_per_class=2), **kw})


def test_the_unseen_pool_is_the_forget_style_images_of_no_test_subset_and_no_shared_source(task):
    test = task.test
    used = set(torch.cat(list(task.eval_sets.values())).tolist())
    used_ids = {int(test.image_ids[i]) for i in used}
    sandal = data.FASHION_MNIST_CLASSES.index("sandal")
    expected = [i for i in range(len(test)) if int(test.targets[i]) == sandal and int(test.styles[i]) == 0
                and i not in used and int(test.image_ids[i]) not in used_ids]
    pool = attacks.unseen_forget_pool(task)
    assert pool.tolist() == expected and len(expected) == 12 - 4  # 12 sandal photos, 4 in the forget test subset


def test_the_unseen_pool_of_a_style_subgroup_avoids_the_sources_of_its_sibling_styles():
    train, test = tiny_world(seed=0), tiny_world(n_per_class=12, seed=1)
    task = harness.build_task(train, test, kind="forget-style-subgroup", target="sketch:sneaker", seed=0,
                              retain_per_class=4, eval_per_class=4, val_per_class=2)
    pool = attacks.unseen_forget_pool(task)
    assert len(pool) and set(test.styles[pool].tolist()) == {data.STYLES.index("sketch")}
    sibling_ids = set(test.image_ids[task.eval_sets["sibling"]].tolist())
    assert not set(test.image_ids[pool].tolist()) & sibling_ids


def test_bad_input_names_the_valid_values(task, tiny_tokenizer, tiny_clip):
    with pytest.raises(ValueError, match=r"whole numbers >= 1"):
        attacks.check_steps([10, 0])
    with pytest.raises(ValueError, match=r"whole numbers >= 1"):
        attacks.check_steps([])
    with pytest.raises(ValueError, match=r"from 1 to 8 \(the unseen 'sandal' images\)"):
        attacks.draw_unseen(task, 9, seed=0)
    with pytest.raises(ValueError, match=r"from 1 to 8"):
        attacks.run_attacks(tiny_clip.model, task, settings(tiny_tokenizer, forget_sizes=(5, 20)))
    with pytest.raises(ValueError, match=r"valid: relearn_retain, relearn_forget, probe_features, quantise_weights"):
        attacks.run_attacks(tiny_clip.model, task, settings(tiny_tokenizer), attacks=["prune"])
    with pytest.raises(ValueError, match=r"whole numbers >= 1"):
        attacks.relearn_retain(tiny_clip.model, task, settings(tiny_tokenizer, retain_steps=(-1,)))


def test_the_draw_is_seeded_and_from_the_pool(task):
    a, b = attacks.draw_unseen(task, 3, seed=1), attacks.draw_unseen(task, 3, seed=1)
    assert torch.equal(a, b) and set(a.tolist()) <= set(attacks.unseen_forget_pool(task).tolist())


def test_relearning_fine_tunes_the_ft_loss_down(task, tiny_tokenizer, tiny_clip):
    loader = make_pair_loader(task.train, tokenizer=tiny_tokenizer, templates=task.templates,
                              indices=task.retain_train[:8], batch_size=8, seed=0)
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    seen = []
    measured, losses = attacks.finetune_pairs(tiny_clip.model, loader, steps=(3, 40), lr=1e-3, seed=0,
                                              measure=lambda m: seen.append(1) or {"n": len(seen)})
    assert sorted(measured) == [3, 40] and len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # the attack's loss falls: it fits the pairs
    assert all(torch.equal(v, tiny_clip.model.state_dict()[k]) for k, v in before.items())  # the model is untouched


def test_each_attack_reports_its_metrics_and_leaves_the_model_alone(task, tiny_tokenizer, tiny_resnet_clip):
    before = {k: v.clone() for k, v in tiny_resnet_clip.model.state_dict().items()}
    out = attacks.run_attacks(tiny_resnet_clip.model, task, settings(tiny_tokenizer))
    assert {"relearn_retain/1/forget_acc", "relearn_retain/2/sibling_acc", "relearn_retain/2/retain_acc",
            "relearn_forget/n2/1/forget_acc", "probe_features/forget_acc", "probe_features/retain_acc",
            "quantise_weights/fp32/forget_acc", "quantise_weights/bf16/retain_acc",
            "quantise_weights/int8/forget_acc"} == set(out) - {"relearn_retain/1/sibling_acc",
                                                               "relearn_retain/1/retain_acc",
                                                               "relearn_retain/2/forget_acc",
                                                               "quantise_weights/fp32/retain_acc",
                                                               "quantise_weights/bf16/forget_acc",
                                                               "quantise_weights/int8/retain_acc"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert all(torch.equal(v, tiny_resnet_clip.model.state_dict()[k]) for k, v in before.items())
    fp32 = attacks.measure_accuracies(tiny_resnet_clip.model, task, tokenizer=tiny_tokenizer, sets=("forget",))
    assert out["quantise_weights/fp32/forget_acc"] == fp32["forget_acc"]


def test_int8_quantises_every_linear_layer_but_the_attention_pool(tiny_resnet_clip):
    names = attacks.quantisable_linears(tiny_resnet_clip.model)
    linears = {n for n, m in tiny_resnet_clip.model.named_modules() if type(m) is torch.nn.Linear}
    assert names and names < linears and all("attnpool" in n for n in linears - names)


def test_the_probe_reads_the_features_and_scores_the_forget_test_images(task, tiny_tokenizer, tiny_clip,
                                                                         monkeypatch):
    # features that are the one-hot label: a linear probe recovers every class, whatever the model
    def encode(model, dataset, *, indices=None, device="cpu", **kw):
        y = torch.as_tensor(dataset.targets)[indices]
        return torch.nn.functional.one_hot(y, 10).float(), y

    monkeypatch.setattr(attacks.metrics, "encode_images", encode)
    out = attacks.probe_features(tiny_clip.model, task, settings(tiny_tokenizer))
    assert out == {"probe_features/forget_acc": 1.0, "probe_features/retain_acc": 1.0}
    # features that carry no class: the forget images are no longer found (the probe falls to the majority class)
    monkeypatch.setattr(attacks.metrics, "encode_images",
                        lambda model, dataset, *, indices=None, **kw: (torch.zeros(len(indices), 4),
                                                                       torch.as_tensor(dataset.targets)[indices]))
    assert attacks.probe_features(tiny_clip.model, task, settings(tiny_tokenizer))["probe_features/forget_acc"] == 0.0


def record(method, seed, *, run_task="forget-class", **metrics):
    target = {"forget-class": "sneaker", "forget-subgroup": "sandal", "forget-style-subgroup": "sketch:sneaker"}
    return make_record(method=method, task=attacks_bench.ATTACK_TASK,
                       config={"run_task": run_task, "forget_class": target[run_task], "seed": seed}, metrics=metrics)


def test_the_gap_to_retrain_is_the_difference_on_the_same_task_and_seed():
    records = [record("retrain", 0, **{"probe_features/forget_acc": 0.25, "relearn_retain/10/forget_acc": 0.5,
                                       "relearn_retain/10/retain_acc": 0.9}),
               record("retrain", 1, **{"probe_features/forget_acc": 0.75}),
               record("ga", 0, **{"probe_features/forget_acc": 0.875, "relearn_retain/10/forget_acc": 0.125,
                                  "relearn_retain/10/retain_acc": 0.8, "regenerated_forget_acc": 0.0}),
               record("ga", 1, **{"probe_features/forget_acc": 0.5}),
               record("ft", 2, **{"probe_features/forget_acc": 0.5})]
    out = {(r["method"], r["config"]["seed"]): r["metrics"] for r in attacks_bench.add_retrain_gaps(records)}
    assert out[("ga", 0)]["gap/probe_features/forget_acc"] == 0.875 - 0.25
    assert out[("ga", 0)]["gap/relearn_retain/10/forget_acc"] == 0.125 - 0.5  # below retrain: negative
    assert out[("ga", 1)]["gap/probe_features/forget_acc"] == 0.5 - 0.75
    assert "gap/relearn_retain/10/retain_acc" not in out[("ga", 0)]  # gaps of forget accuracies only
    assert "gap/regenerated_forget_acc" not in out[("ga", 0)]
    assert out[("retrain", 0)]["gap/probe_features/forget_acc"] == 0.0
    assert not any(k.startswith("gap/") for k in out[("ft", 2)])  # no retrained model of seed 2
    again = attacks_bench.add_retrain_gaps(attacks_bench.add_retrain_gaps(records))
    assert again == attacks_bench.add_retrain_gaps(records)  # idempotent


def test_the_table_cell_is_the_mean_and_the_gap_mean_and_sd():
    records = attacks_bench.add_retrain_gaps(
        [record(m, s, **{"probe_features/forget_acc": v}) for m, s, v in
         [("retrain", 0, 0.5), ("retrain", 1, 0.5), ("ga", 0, 0.6), ("ga", 1, 0.9)]])
    table = plots.attack_table(records, task="forget-class", columns={"probe": "probe_features/forget_acc"})
    sd = math.sqrt(((0.1 - 0.25) ** 2 + (0.4 - 0.25) ** 2) / 1)
    assert table.loc["ga", "probe"] == f"{0.75:.3f} ({0.25:+.3f} ± {sd:.3f})"
    assert table.loc["retrain", "probe"] == "0.500 (+0.000 ± 0.000)"
    numeric = plots.attack_table(records, task="forget-class", columns={"probe": "probe_features/forget_acc"},
                                 numeric=True)
    assert numeric.loc["ga", "probe"] == pytest.approx(0.25)


def test_the_benchmark_refuses_a_method_without_a_record(task, tiny_tokenizer, tiny_clip):
    bench = [make_record(method="ga", task="forget-subgroup", config={"forget_class": "sandal", "seed": 0, "lr": 1e-4},
                         metrics={"forget_acc": 0.1})]
    refs = {"sandal": harness.Reference(model=tiny_clip.model, record={})}
    with pytest.raises(ValueError, match=r"no benchmark record of 'cliperase'.*methods with records: ga"):
        attacks_bench.run_attack_benchmark(bench, {"sandal": [task]}, methods=["cliperase"], model=tiny_clip.model,
                                           tokenizer=tiny_tokenizer, references=refs, store=None)
    with pytest.raises(ValueError, match=r"no retrained model for 'sandal'"):
        attacks_bench.run_attack_benchmark(bench, {"sandal": [task]}, methods=["ga"], model=tiny_clip.model,
                                           tokenizer=tiny_tokenizer, references={}, store=None)
    assert attacks_bench.attack_methods(bench, tasks=["forget-subgroup"]) == ["ga"]


def test_a_loss_run_is_regenerated_exactly_from_its_record(task, tiny_tokenizer, tiny_clip):
    _, rec = harness.run_method("ga", task, model=tiny_clip.model, tokenizer=tiny_tokenizer, lr=1e-3, steps=4,
                                batch_size=8)
    model = attacks_bench.regenerate_model(rec, task, model=tiny_clip.model, tokenizer=tiny_tokenizer)
    again = attacks.measure_accuracies(model, task, tokenizer=tiny_tokenizer, sets=("forget", "retain"))
    assert again == {"forget_acc": rec["metrics"]["forget_acc"], "retain_acc": rec["metrics"]["retain_acc"]}
    with pytest.raises(ValueError, match=r"seed 5, the task forget-subgroup/sandal/seed 0"):
        attacks_bench.regenerate_model({**rec, "config": {**rec["config"], "seed": 5}}, task, model=tiny_clip.model,
                                       tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"cannot regenerate 'lipschitz_real': valid methods are"):
        attacks_bench.regenerate_model({**rec, "method": "lipschitz_real"}, task, model=tiny_clip.model,
                                       tokenizer=tiny_tokenizer)


def test_the_method_list_comes_from_the_records_and_keeps_the_procedures_that_can_be_rebuilt():
    bench = [make_record(method=m, task=k, config={"forget_class": "x", "seed": s}, metrics={})
             for m, k, s in [("original", "forget-class", None), ("ga", "forget-class", 0),
                             ("lipschitz_real", "forget-class", 0), ("three_stage", "forget-subgroup", 0),
                             ("brand_new", "forget-class", None)]]
    assert attacks_bench.attack_methods(bench, tasks=["forget-class", "forget-subgroup"]) == [
        "ga", "lipschitz_real", "three_stage"]
    assert attacks_bench.attack_methods(bench, tasks=["forget-class"], regenerable=True) == ["ga"]
    assert attacks_bench.attack_methods(bench, tasks=["forget-class"], regenerable=False) == ["lipschitz_real"]
    mixed = [make_record(method=m, task="forget-class", config={"forget_class": "x", "seed": 0,
                                                                   **({"synthetic_prior": "bn"} if b else {})},
                         metrics={}) for m, b in [("brand_new", 0), ("three_stage", 0), ("lipschitz_synthetic", 1),
                                                  ("cliperase", 0), ("lipschitz_synthetic", 0), ("ga", 0), ("ft", 0)]]
    assert attacks_bench.attack_methods(mixed, tasks=["forget-class"]) == [  # the registry's order, not the saved one
        "ft", "ga", "cliperase", "lipschitz_synthetic", "lipschitz_synthetic_bn", "three_stage", "brand_new"]


def test_a_synthetic_prior_is_a_method_of_its_own_and_nullspace_is_rebuilt_from_its_alpha(task, tiny_tokenizer,
                                                                                            tiny_resnet_clip):
    bench = [make_record(method="lipschitz_synthetic", task="forget-class",
                         config={"forget_class": "x", "seed": 0, "synthetic_prior": p}, metrics={})
             for p in ("none", "bn")]
    assert attacks_bench.attack_methods(bench, tasks=["forget-class"], regenerable=True) == [
        "lipschitz_synthetic", "lipschitz_synthetic_bn"]
    rec = make_record(method="nullspace", task=task.kind, config={"forget_class": task.target, "seed": task.seed,
                                                                  "alpha": 1.0}, metrics={})
    model = attacks_bench.regenerate_model(rec, task, model=tiny_resnet_clip.model, tokenizer=tiny_tokenizer)
    original = tiny_resnet_clip.model.visual.attnpool.c_proj.weight
    assert not torch.equal(model.visual.attnpool.c_proj.weight, original)  # the projection was applied to a copy


def rec(method, fp32, probe, benign, targeted, run_task="forget-class", rebuilt=None):
    """An attack record with the metrics the statements read (``rebuilt``: a rebuilt run's forget accuracy)."""
    check = {} if rebuilt is None else {"regenerated_forget_acc": rebuilt, "recorded_forget_acc": fp32,
                                        "regenerated_matches": abs(rebuilt - fp32) <= 1e-4}
    return record(method, 0, run_task=run_task, **{
        "quantise_weights/fp32/forget_acc": fp32, "quantise_weights/bf16/forget_acc": fp32,
        "quantise_weights/int8/forget_acc": fp32, "probe_features/forget_acc": probe,
        "relearn_retain/100/forget_acc": benign, "relearn_forget/n20/30/forget_acc": targeted, **check})


def subgroup_records():
    """The sandal and the sketches: the retrained model, two methods that forget, NegGrad+ on the sketches."""
    sub, style = "forget-subgroup", "forget-style-subgroup"
    return [rec("retrain", 0.0, 0.79, 0.0, 0.0, sub), rec("ga", 0.0, 0.95, 0.13, 0.0, sub, rebuilt=0.0),
            rec("cliperase", 0.05, 0.90, 0.12, 0.0, sub, rebuilt=0.05),
            rec("retrain", 0.61, 0.96, 0.52, 0.0, style), rec("ga", 0.07, 0.99, 0.85, 0.0, style, rebuilt=0.07),
            rec("cliperase", 0.02, 0.99, 0.78, 0.0, style, rebuilt=0.02),
            rec("neggrad_plus", 0.02, 0.99, 0.19, 0.0, style, rebuilt=0.02)]


def test_the_subgroup_statements_see_a_change():
    """Statement 6 (a positive probe gap on the sandal), 7 (the sketches come back, NegGrad+ the least) and 0 (every
    rebuilt run matches its record) each fail when one number crosses its bar."""
    def holds(records):
        return {f.key: f.holds for f in findings.check_attacks(attacks_bench.add_retrain_gaps(records))}

    base = subgroup_records()
    assert holds(base)["6"] and holds(base)["7"] and holds(base)["0"]
    records = copy.deepcopy(base)
    records[2] = rec("cliperase", 0.05, 0.75, 0.12, 0.0, "forget-subgroup", rebuilt=0.05)  # probe gap -0.04
    assert not holds(records)["6"]
    records = copy.deepcopy(base)
    records[5] = rec("cliperase", 0.02, 0.99, 0.60, 0.0, "forget-style-subgroup", rebuilt=0.02)  # gap 0.08
    assert not holds(records)["7"]
    records = copy.deepcopy(base)
    records[6] = rec("neggrad_plus", 0.02, 0.99, 0.80, 0.0, "forget-style-subgroup", rebuilt=0.02)  # not the least
    assert not holds(records)["7"]
    records = copy.deepcopy(base)
    records[1] = rec("ga", 0.0, 0.95, 0.13, 0.0, "forget-subgroup", rebuilt=0.02)  # a rebuilt run drifted
    assert not holds(records)["0"]


def test_the_statements_see_a_method_that_forgets_in_its_features_too():
    records = [rec("original", 0.96, 0.95, 0.6, 1.0), rec("retrain", 0.0, 0.79, 0.0, 0.0),
               rec("ga", 0.0, 0.94, 0.26, 0.0, rebuilt=0.0), rec("cliperase", 0.0, 0.92, 0.13, 0.0),
               rec("graddiff", 0.0, 0.93, 0.2, 0.0), rec("neggrad_plus", 0.0, 0.93, 0.3, 0.0),
               rec("ft", 0.0, 0.91, 0.0, 0.0), rec("random_labels", 0.0, 0.92, 0.01, 0.0),
               rec("nullspace", 0.0, 0.92, 0.0, 0.0)] + subgroup_records()
    holds = {f.key: f.holds for f in findings.check_attacks(attacks_bench.add_retrain_gaps(records))}
    assert all(holds.values()) and set(holds) == {"0", "1", "2", "3", "4", "5", "6", "7"}
    steady = records[6]
    for back in (0.2, 0.25):  # FT's sneaker comes back as much as GradDiff's (0.2), or more: the order is gone
        records[6] = rec("ft", 0.0, 0.91, back, 0.0)
        assert not {f.key: f.holds for f in findings.check_attacks(attacks_bench.add_retrain_gaps(records))}["4"]
    records[6] = rec("ft", 0.0, 0.91, 0.19, 0.0)  # below both ascent methods: no absolute bound on the others
    assert {f.key: f.holds for f in findings.check_attacks(attacks_bench.add_retrain_gaps(records))}["4"]
    records[6] = steady
    records[2] = rec("ga", 0.0, 0.85, 0.26, 0.0)  # a probe gap of 0.06: the features forgot as well
    holds = {f.key: f.holds for f in findings.check_attacks(attacks_bench.add_retrain_gaps(records))}
    assert not holds["3"] and holds["4"]
    records[3] = rec("cliperase", 0.0, 0.92, 0.13, 0.2)  # targeted relearning brings CLIPErase back
    holds = {f.key: f.holds for f in findings.check_attacks(attacks_bench.add_retrain_gaps(records))}
    assert not holds["5"]
    assert [f.key for f in findings.check_attacks(records, quick=True)] == ["0"]


def test_rebuilt_procedures_take_the_settings_their_record_keeps(monkeypatch):
    """A rebuilt Lipschitz run makes its synthetic images with the record's generation settings and image counts and
    forgets with the record's own settings; a rebuilt three-stage run takes the record's stage settings. What a
    record does not keep falls back to the mini settings."""
    seen = {}

    def fake_generate(model, task, *, tokenizer, n_train, n_val, generation, seed, device):
        seen["generate"] = dict(n_train=n_train, n_val=n_val, generation=generation)
        return "forget", "val", {}

    def fake_run(task, **kwargs):
        seen["run"] = kwargs
        return "model", {}

    monkeypatch.setattr(attacks_bench, "generate_task_synthetic", fake_generate)
    monkeypatch.setattr(attacks_bench, "run_lipschitz", fake_run)
    monkeypatch.setattr(attacks_bench, "run_three_stage", fake_run)
    mini = attacks_bench.mini_settings()
    config = {"lr": 0.01, "max_epochs": 5, "n_samples": 10, "forget_images": 16, "synthetic": {"images": 24},
              "generation": {"steps": 50, "patience": 10}}
    task = type("FakeTask", (), {"seed": 0})()
    assert attacks_bench._regenerate_lipschitz({"config": config}, task, model=None, tokenizer=None,
                                               device="cpu") == "model"
    generation = seen["generate"]["generation"]
    assert (seen["generate"]["n_train"], seen["generate"]["n_val"]) == (16, 8)
    assert (generation["steps"], generation["patience"]) == (50, 10)
    assert generation["step_size"] == mini["lipschitz"]["generation"]["step_size"]  # not kept: the mini setting
    run = seen["run"]
    assert (run["lr"], run["max_epochs"], run["n_samples"]) == (0.01, 5, 10)
    assert run["batch_size"] == mini["lipschitz"]["forgetting"]["batch_size"]
    # a record without generation settings or counts: the mini ones
    attacks_bench._regenerate_lipschitz({"config": {"lr": 0.01}}, task, model=None, tokenizer=None, device="cpu")
    assert seen["generate"]["generation"]["steps"] == mini["lipschitz"]["generation"]["steps"]
    assert (seen["generate"]["n_train"], seen["generate"]["n_val"]) == (mini["lipschitz"]["n_train"],
                                                                         mini["lipschitz"]["n_val"])
    attacks_bench._regenerate_three_stage({"config": {"lr": 1e-3, "remind_steps": 10, "batch_size": 16}}, task,
                                          model=None, tokenizer=None, device="cpu")
    settings = seen["run"]["settings"]
    assert settings["remind_steps"] == 10 and seen["run"]["batch_size"] == 16
    assert settings["forget_steps"] == mini["three_stage"]["settings"]["forget_steps"]
