"""The unlearning loop with the token embedding trained as a dense table against only the rows the run reads
(``embedding_rows.EmbeddingRows``, the loop's default without weight decay).

Each method runs ``--steps`` steps on the mini CLIP twice from the same start (forget and retain batches of the
class task's sneakers at batch 32, an evaluation every 15 steps and selection of the best one), once with
``embedding_rows=False`` and once with the rows. Prints the milliseconds per step of both, the speed-up, and whether
the two runs end with the same weights bit for bit and logged the same losses. Example::

    python benchmarks/bench_embedding_rows.py --methods ft cliperase graddiff ga --steps 40 --threads 2

Measured numbers go to ``benchmarks/README.md`` with the machine named.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from clipunlearn import data, experiment, metrics, models
from clipunlearn.papers import benchmark_tasks
from clipunlearn.unlearning import make_pair_loader, unlearn


def make_task(tokenizer):
    """The benchmark's class task (reported seed 0), its loaders at batch 32 and its class prompts."""
    train, test = data.load_mini_world()
    selection = experiment.protocol_for([0])
    kind = "forget-class"
    tasks = benchmark_tasks.build_benchmark_tasks(train, test, tasks={kind: benchmark_tasks.BENCHMARK_TASKS[kind]},
                                                  seeds=selection.with_seeds([0]), n_seen=models.MINI_SEEN_IMAGES)
    task = experiment.reported_tasks(next(iter(tasks[kind].values())), selection)[0]
    kw = dict(tokenizer=tokenizer, templates=task.templates, batch_size=32)
    return (task, make_pair_loader(task.train, indices=task.forget_train, seed=4, **kw),
            make_pair_loader(task.train, indices=task.retain_train, seed=3, **kw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ft", "cliperase", "graddiff", "ga"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, _, tokenizer = models.load_clip("mini", device="cpu")
    task, forget, retain = make_task(tokenizer)
    prompts = tokenizer([f"a photo of a {c}." for c in task.classnames])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps per run")

    def evaluate(m):
        clf = metrics.build_classifier(m, tokenizer, task.classnames, task.templates, device="cpu")
        return {"acc": metrics.accuracy(m, clf, task.test, indices=task.eval_sets["forget"][:100], device="cpu")}

    for method in args.methods:
        kwargs = {"class_texts": prompts} if method in ("graddiff", "neggrad_plus", "ga") else {}
        runs = {}
        for rows in (False, True):
            model = copy.deepcopy(base)
            start = time.perf_counter()
            run = unlearn(model, method=method, forget_loader=forget, retain_loader=retain, max_steps=args.steps,
                          lr=1e-4, loss_kwargs=kwargs, eval_fn=evaluate, eval_every=15,
                          select_fn=lambda e: -e["acc"], logit_scale="clamped", progress=False, embedding_rows=rows)
            runs[rows] = (model.state_dict(), (time.perf_counter() - start) / args.steps * 1e3,
                          [h.get("loss") for h in run.history])
        (dense, dense_ms, dense_losses), (sparse, rows_ms, rows_losses) = runs[False], runs[True]
        same = all(torch.equal(dense[k], sparse[k]) for k in dense)
        print(f"{method:>12}: dense {dense_ms:6.1f} ms/step, rows {rows_ms:6.1f} ms/step "
              f"({dense_ms / rows_ms:.2f}x); same weights bit for bit: {same}; same losses: "
              f"{dense_losses == rows_losses}")


if __name__ == "__main__":
    main()
