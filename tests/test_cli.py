"""The command line: python -m clipunlearn COMMAND."""

import subprocess
import sys

from clipunlearn.__main__ import main
from clipunlearn.results import save_records

from .fake_records import (ablation_records, forget_class_records, forget_ratio_records, selection_records,
                           setup_record)


def test_data_list_names_every_dataset(capsys):
    assert main(["data", "--list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "cifar100" in out


def test_unknown_command_lists_the_commands(capsys):
    assert main(["train"]) == 2
    captured = capsys.readouterr()
    assert "unknown command 'train'" in captured.err and "data, models" in captured.err
    assert main(["--help"]) == 0


def test_models_without_action_prints_help(capsys):
    assert main(["models"]) == 0
    assert "--train-mini" in capsys.readouterr().out


def test_python_dash_m_runs_without_runpy_warning():
    done = subprocess.run([sys.executable, "-m", "clipunlearn", "data", "--list"], capture_output=True, text=True,
                          check=True)
    assert "fashion-mnist" in done.stdout and "RuntimeWarning" not in done.stderr


def test_figures_redraws_every_registered_results_file(tmp_path, capsys):
    results, figures = tmp_path / "results", tmp_path / "figures"
    lean = forget_class_records(per_class=False, confusion=False, history_points=0)
    save_records(results / "mini" / "10_cliperase.json",
                 lean + ablation_records() + forget_ratio_records() + selection_records())
    save_records(results / "mini" / "00_setup_and_baseline.json", [setup_record()])
    save_records(results / "mini" / "99_unregistered.json", forget_class_records())
    assert main(["figures", "--profile", "mini", "--results-dir", str(results), "--figures-dir", str(figures)]) == 0
    out = capsys.readouterr().out
    drawn = {p.name for p in (figures / "mini").glob("*.png")}
    assert {"10_main.png", "10_ablation.png", "10_forget_ratio.png", "10_selection.png", "00_confusion.png",
            "00_embedding_map.png", "00_training_loss.png"} <= drawn
    assert not any(name.startswith("20_") for name in drawn)
    assert "20_synthetic_lipschitz: no results at" in out  # missing file: reported, not fatal
    assert "99_unregistered: no figures registered" in out


def test_figures_only_and_unknown_stem(tmp_path, capsys):
    results, figures = tmp_path / "results", tmp_path / "figures"
    save_records(results / "quick-mini" / "10_cliperase.json", forget_class_records())
    save_records(results / "quick-mini" / "00_setup_and_baseline.json", [setup_record()])
    args = ["--results-dir", str(results), "--figures-dir", str(figures), "--quick"]
    assert main(["figures", "--only", "10", *args]) == 0
    assert {p.name[:3] for p in (figures / "quick-mini").glob("*.png")} == {"10_"}
    assert main(["figures", "--only", "42", *args]) == 2
    assert "notebooks with figures: 00_setup_and_baseline" in capsys.readouterr().err
    assert main(["figures", "--profile", "huge", *args]) == 2


def test_report_renders_readme_and_check_exits_1_when_stale(tmp_path, capsys):
    results = tmp_path / "results"
    save_records(results / "mini" / "10_cliperase.json", forget_class_records())
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results: 10_cliperase forget-class metrics=forget_acc -->\n<!-- /results -->\n")
    args = ["report", "--readme", str(readme), "--results-dir", str(results)]
    assert main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(args) == 0
    assert "| GA | 0.315 ± 0.007 | 4 |" in readme.read_text()
    assert main([*args, "--check"]) == 0
    assert main(["report", "--readme", str(tmp_path / "missing.md")]) == 2
