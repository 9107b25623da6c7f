"""The paper profile's plan: run counts worked out by hand from the papers' settings, the timing arithmetic, the CLI;
the GPU check's verdicts; and the dependency ranges that let a GPU box keep its torch."""

import re
import tomllib
from pathlib import Path

import pytest

from clipunlearn import calibration, environment, image_cache, plan
from clipunlearn.papers import paper_a, paper_b, paper_c

ROOT = Path(__file__).resolve().parents[1]


def rows(workloads, section):
    found = [w for w in workloads if w.section == section]
    assert len(found) == 1, [w.section for w in workloads]
    return found[0]


def test_task_sizes_follow_the_caps_by_hand():
    # CIFAR-100: 500 training images per class, 450 after the 10% validation split, 100 test images per class
    full = plan.task_sizes("cifar100", {"retain_per_class": None, "eval_per_class": None, "train_eval": True})
    assert full == {"retain_train": 99 * 450, "forget_train": 450, "val": 100 * 50, "test": 100 * 100,
                    "train_eval": 100 * 450}
    capped = plan.task_sizes("cifar100", {"retain_per_class": 50, "eval_per_class": 30, "val_per_class": 20})
    assert capped == {"retain_train": 99 * 50, "forget_train": 450, "val": 100 * 20, "test": 100 * 30,
                      "train_eval": 0}
    with pytest.raises(ValueError, match="known: .*cifar100"):
        plan.task_sizes("no-such-set")


def test_paper_c_counts_by_hand():
    settings = paper_c.paper_c_settings("paper", seeds="0,1,2")
    work = plan.plan_paper_c(settings)
    # 20 epochs over the retain pairs: 99 classes x 450 images at batch 16
    steps = 20 * -(-99 * 450 // 16)
    assert steps == 55_700
    ft = rows(work, "main: ft")
    assert (ft.runs, ft.steps, ft.batch) == (3 * (3 + 3), steps, 16)  # 3 classes x (3 grid values + 3 seeds)
    assert ft.images == 18 * steps * 16
    ratio = rows(work, "forget ratio 0.3: cliperase")
    assert (ratio.runs, ratio.steps) == (6, steps)  # 30 of 100 classes; 20 epochs over the retain set whatever k
    forget_epochs = plan.plan_paper_c(paper_c.paper_c_settings("paper", seeds="0,1,2", epochs_over="forget"))
    per_epoch = -(-450 // 16)  # epochs over the one class's 450 forget pairs
    assert rows(forget_epochs, "forget ratio 0.3: cliperase").steps == 30 * 20 * per_epoch  # steps per class
    val = rows(work, "main: validation passes")
    assert val.runs == 7 * 3 * 6 * 10 and val.steps == -(-100 * 50 // 128)
    test = rows(work, "main: test (and training-pair) evaluation")
    assert test.runs == 7 * 3 * 3 and test.steps == -(-(10_000 + 45_000) // 128)
    assert rows(work, "paper protocol").runs == 3 * 3
    assert rows(work, "retrieval (Flickr30K)").steps == 0  # not estimated, said in its note
    quick = plan.plan_paper_c(paper_c.paper_c_settings("paper", quick=True, seeds="0,1,2"))
    assert rows(quick, "main: ft").runs == 1 * (1 + 1) and rows(quick, "main: ft").steps == 10


def test_paper_b_and_a_counts_by_hand():
    b = paper_b.paper_b_settings("paper", seeds="0,1,2")
    work = plan.plan_paper_b(b)
    lip = rows(work, "RN50 stanford-dogs: lipschitz_synthetic")
    assert (lip.runs, lip.steps, lip.batch, lip.step) == (3 * 6, 30, 64, "lipschitz")  # 30 epochs of 64 images
    synth = rows(work, "RN50 stanford-dogs: synthetic images")
    assert (synth.runs, synth.steps) == (3 * 4, 3000 * 2)  # 4 seeds (selection + 3), 96 images at batch 64
    test = rows(work, "RN50 stanford-dogs: test (own and other sets)")
    per_class = {"stanford-dogs": 8580 // 120, "stanford-cars": 8041 // 196, "caltech101": 2465 // 100,
                 "flowers102": 2463 // 102}
    classes = {"stanford-dogs": 120, "stanford-cars": 196, "caltech101": 100, "flowers102": 102}
    assert test.steps == -(-sum(per_class[d] * classes[d] for d in classes) // 128)
    assert sum(w.runs for w in work if w.step == "lipschitz") == 2 * 4 * 2 * 18 + 7
    a = paper_a.paper_a_settings("paper", seeds="0,1,2")
    work = plan.plan_paper_a(a)
    three = rows(work, "three stages: forgetting + reminding")
    assert (three.runs, three.steps) == (2 * 6, 100 + 30)
    val = rows(work, "baseline: ga validation passes")
    assert val.runs == 12 * 10 and val.steps == -(-1000 * 100 // 128)  # 1000 classes x 100 validation images


def test_estimate_multiplies_runs_steps_and_the_timed_step(monkeypatch):
    work = [plan.Workload("n", "a", "m", "ft", runs=3, steps=10, batch=4),
            plan.Workload("n", "b", "m", "eval", runs=2, steps=5, batch=8),
            plan.Workload("n", "c", "m", "ft", runs=1, steps=0, batch=4)]

    def fake(needed, **kw):
        return {k: calibration.StepTime(*k, seconds={"ft": 0.5, "eval": 0.25}[k[1]], measured_batch=k[2],
                                        device="cpu") for k in needed}
    monkeypatch.setattr(plan, "calibrate_steps", fake)
    out = plan.estimate_plan(work, device="cpu", log=None)
    assert [w.seconds for w in out] == [3 * 10 * 0.5, 2 * 5 * 0.25, None]
    text = plan.format_plan(out, workers=3)
    assert "total: 0.3 min on one device" in text and "on 3 devices" in text


def test_calibration_times_every_step_and_scales_per_image():
    needed = [("tiny-vit", "ft", 4), ("tiny-vit", "cliperase", 4), ("tiny-vit", "eval", 8), ("tiny-vit", "ft", 2)]
    times = calibration.calibrate_steps(needed, device="cpu", max_batch=2, repeats=1, log=None)
    assert set(times) == set(needed)
    assert all(t.seconds > 0 and t.measured_batch == 2 for t in times.values())
    # the batch-4 figure is the batch-2 timing scaled per image
    assert times["tiny-vit", "ft", 4].seconds == pytest.approx(2 * times["tiny-vit", "ft", 2].seconds)
    with pytest.raises(ValueError, match="valid: .*cliperase.*eval"):
        calibration.calibrate_steps([("tiny-vit", "nope", 2)], device="cpu", log=None)


def test_plan_cli_counts_and_mini(capsys):
    assert plan.main(["--profile", "paper", "--counts-only", "--only", "30"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("30_subgroup_forgetting:") and "three stages" in out and "total" not in out
    assert plan.main(["--profile", "mini"]) == 0
    out = capsys.readouterr().out
    measured = plan.measured_times("mini")
    if measured:  # a complete mini run under runs/mini: its measured times and their sum
        assert f"total: {sum(measured.values()) / 60:.1f} min measured" in out
    else:
        assert "no complete mini run" in out


def test_gpu_check_verdicts(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ok, msg = environment.check_gpu(driver={}, problem=None)
    assert ok and "no NVIDIA driver" in msg
    driver = {"driver": "535.1", "cuda": "12.2", "gpus": ["Tesla T4"]}
    ok, msg = environment.check_gpu(driver=driver, problem="")
    assert ok and "Tesla T4" in msg
    monkeypatch.setattr(environment.torch.version, "cuda", "13.0")
    ok, msg = environment.check_gpu(driver=driver, problem="CUDA driver version is insufficient")
    assert not ok and "whl/cu122" in msg and "insufficient" in msg
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert environment.check_gpu(driver=driver, problem="anything")[0]


def test_no_exact_pin_of_torch_torchvision_or_open_clip():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    assert not [d for d in deps if "==" in d], deps
    for name in ("torch", "torchvision", "open_clip_torch"):
        spec = next(d for d in deps if re.split(r"[<>=!~ \[]", d)[0] == name)
        assert ">=" in spec, spec
    pinned = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps} <= pinned  # the exact versions live there


FP32_224 = 3 * 224 * 224 * 4  # bytes of one decoded image on the CPU (a GPU keeps half: fp16)


def touched(dataset, task):
    """Every image a task of ``dataset`` decodes (no overlap counted away: an upper bound)."""
    sizes = plan.task_sizes(dataset, task)
    return sizes["retain_train"] + sizes["forget_train"] + sizes["val"] + sizes["test"] + sizes["train_eval"]


def test_quick_paper_runs_fit_their_cache_budget():
    c = paper_c.paper_c_settings("paper", quick=True, seeds="0")
    assert c["cache_bytes"] == image_cache.QUICK_CACHE_BYTES == 6 * 2**30
    assert touched(c["dataset"], c["task"]) * FP32_224 <= c["cache_bytes"]
    b = paper_b.paper_b_settings("paper", quick=True, seeds="0")
    [(dataset, classes)] = b["forget"].items()
    others = sum(plan.task_sizes(o, b["task"])["test"] for o in b["others"][dataset])
    per_backbone = touched(dataset, b["task"]) + others
    assert len(b["backbones"]) * per_backbone * FP32_224 <= b["cache_bytes"] == image_cache.QUICK_CACHE_BYTES
    # full runs: half of the device's memory
    assert "cache_bytes" not in paper_c.paper_c_settings("paper", seeds="0")
    assert "cache_bytes" not in paper_b.paper_b_settings("paper", seeds="0")
