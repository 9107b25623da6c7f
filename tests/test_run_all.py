"""Argument handling of run_all.sh and run_tests.sh (parsed before any set-up, so fast)."""

from __future__ import annotations

import subprocess

import pytest

from clipunlearn.paths import PROFILES


def run_script(repo_root, script, *args):
    return subprocess.run(
        ["bash", str(repo_root / script), *args],
        capture_output=True, text=True, timeout=30, cwd=repo_root,
    )


def test_help_lists_options(repo_root):
    proc = run_script(repo_root, "run_all.sh", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--profile", "--only", "--force", "--quick", "--help"):
        assert option in proc.stdout
    for profile in PROFILES:
        assert profile in proc.stdout


@pytest.mark.parametrize("args", [("--profile", "huge"), ("--profile=huge",)])
def test_unknown_profile_is_rejected(repo_root, args):
    proc = run_script(repo_root, "run_all.sh", *args)
    assert proc.returncode != 0
    assert "huge" in proc.stderr
    for profile in PROFILES:
        assert profile in proc.stderr


@pytest.mark.parametrize("args", [("--bogus",), ("--profile",), ("--only",), ("-p", "X")])
def test_bad_arguments_are_rejected(repo_root, args):
    proc = run_script(repo_root, "run_all.sh", *args)
    assert proc.returncode == 2
    assert "run_all.sh:" in proc.stderr


@pytest.mark.parametrize("args, message", [(("--retrained-mini", "x"), "training seed"),
                                           (("--retrained-mini",), "needs a training seed"),
                                           (("--retrained-mini", "1", "--profile", "paper"), "mini profile only")])
def test_retrained_mini_option_is_checked(repo_root, args, message):
    proc = run_script(repo_root, "run_all.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_thread_count_is_checked_and_documented(repo_root):
    proc = subprocess.run(["bash", str(repo_root / "run_all.sh"), "--only", "00"], capture_output=True, text=True,
                          timeout=30, cwd=repo_root, env={"PATH": "/usr/bin:/bin", "CLIPUNLEARN_THREADS": "two"})
    assert proc.returncode == 2 and "CLIPUNLEARN_THREADS" in proc.stderr
    assert "OMP_NUM_THREADS" in run_script(repo_root, "run_all.sh", "--help").stdout


def test_profiles_match_library(repo_root):
    """run_all.sh hard-codes the profiles so it can reject bad ones before set-up."""
    text = (repo_root / "run_all.sh").read_text()
    assert f"PROFILES=({' '.join(PROFILES)})" in text


def test_run_tests_help(repo_root):
    proc = run_script(repo_root, "run_tests.sh", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--unit", "--notebooks"):
        assert option in proc.stdout


def test_a_parameter_no_notebook_declares_stops_with_their_lists(repo_root):
    proc = run_script(repo_root, "run_all.sh", "--only", "10", "-p", "SEEDS", "0", "-p", "NOSUCH", "1")
    assert proc.returncode == 2
    assert "no notebook to run declares the parameter 'NOSUCH'; their parameters:" in proc.stderr
    listed = next(line for line in proc.stderr.splitlines() if line.strip().startswith("10_cliperase:"))
    assert {"PROFILE", "QUICK", "SEEDS", "FORGET_CLASSES"} <= set(listed.split(":", 1)[1].split())
    assert "setup:" not in proc.stdout + proc.stderr  # refused before any set-up
