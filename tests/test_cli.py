"""The command line: python -m clipunlearn COMMAND."""

import subprocess
import sys

from clipunlearn.__main__ import main


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
