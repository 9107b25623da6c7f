"""Notebook 10's quick mini matrix: serial (2 threads, as ./run_all.sh; and 1 thread) against Ray with 2 workers.

Runs ``cluster.run_paper_c_matrix`` (the benchmark, the module ablation and the forget-ratio sweep of notebook 10
in quick mode: 27 records) into a temporary store three ways and prints the wall time of each, and whether the
Ray records equal the 1-thread serial ones (a Ray worker uses one thread per CPU it asks for). Ray starts a local
instance of ``--workers`` CPUs; its start-up is timed apart, and the matrix runs twice on it (the first run
includes each worker loading the model and data once). Example::

    python benchmarks/bench_cluster.py --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from clipunlearn import cluster
from clipunlearn.harness import ResultStore

MEASURED = {"seconds", "val_seconds", "method_seconds", "train_seconds", "peak_mem_mb", "base_mem_mb"}


def timed_matrix(path: Path, **kwargs) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    records = cluster.run_paper_c_matrix(ResultStore(path), world=cluster.paper_c_world_spec("mini", quick=True,
                                                                                             seeds="0"), **kwargs)
    return time.perf_counter() - start, records


def numbers(records: list[dict]) -> dict:
    """Every record's metrics but the measured ones, by identity."""
    return {(r["method"], r["task"], r["config"].get("run_task"), r["config"].get("forget_class"),
             r["config"].get("seed"), r["config"].get("variant"), r["config"].get("forget_ratio")):
            {k: v for k, v in r["metrics"].items() if k not in MEASURED} for r in records}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (one run each)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    cluster.load_world(cluster.paper_c_world_spec("mini", quick=True, seeds="0"))  # the driver's copy, not timed
    rows = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        seconds, records = timed_matrix(tmp / f"serial{threads}.json")
        rows.append((f"serial, {threads} thread{'s' * (threads > 1)}", seconds, len(records)))
        if threads == 1:
            serial = numbers(records)
    start = time.perf_counter()
    executor = cluster.RayExecutor("local", num_cpus=args.workers, log=None)
    rows.append((f"Ray start ({args.workers} CPUs)", time.perf_counter() - start, 0))
    try:
        for attempt in ("first", "second"):
            seconds, records = timed_matrix(tmp / f"ray_{attempt}.json", executor=executor)
            same = numbers(records) == serial
            rows.append((f"Ray, {args.workers} workers x 1 thread ({attempt} run){'' if same else ' DIFFERS'}",
                         seconds, len(records)))
    finally:
        executor.shutdown()
    print(f"torch {torch.__version__}; notebook 10's quick mini matrix")
    print(f"{'':<48} {'seconds':>8} {'records':>8}")
    for name, seconds, n in rows:
        print(f"{name:<48} {seconds:8.1f} {n or '':>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
