"""Benchmark the paper profile's steps: unlearning losses, synthetic-image ascent and evaluation.

For open_clip ``RN50`` and ``ViT-B-16`` at 224 px, built with random weights
(``open_clip.create_model(name, pretrained=None)``: nothing is downloaded), at the
papers' batch sizes (CLIPErase 16, paper B 64, evaluation 128), the script times

* one training step (forward + backward + Adam) of the registered losses ``ft``,
  ``cliperase`` (with the frozen original) and ``lipschitz`` (``n_samples=25``),
  called as ``loss_fn(model, original, forget_batch, retain_batch, **kwargs)``;
* one step of the synthetic-image ascent (``synthetic.generate_synthetic``, no image
  stops early): ``(time of 1 + N steps - time of 1 step) / N``, so the set-up of the
  noise is not counted (bf16: autocast inside the image encoder only, see
  :func:`encoder_autocast`);
* evaluation: image encoding without gradients,

in fp32 (TF32 matmuls and convolutions allowed) and in bf16 autocast. It reports the
images per second (median of ``--steps`` timed steps after ``--warmup`` steps, with
``torch.cuda.synchronize``), the peak memory (``torch.cuda.max_memory_allocated``), the
FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``) and the achieved
TFLOP/s as a fraction of the card's dense peak (bf16 peak for bf16 rows, TF32 peak for
fp32 rows; "unknown" for cards not in ``PEAKS``). "images/step" counts the images the
trained model takes with gradients (CLIPErase: forget + retain batch; Lipschitz: the
forget batch, plus 25 perturbed copies of each without gradients).

``--compile MODE`` (``unlearning.COMPILE_MODES``) times the training rows with the step's loss
compiled as ``unlearning.unlearn(compile=MODE)`` compiles it (the warm-up steps compile; FLOPs are
counted on the eager step, the same computation). ``--stacked K`` adds rows of ``ft`` and
``cliperase`` trained K runs at once (``stacked_runs.make_stacked_step``: one vmapped step of K
copies, each its own AdamW state) beside the same with 1 run; their "img/step" counts the images of
all K runs (the FLOPs are K times one eager step's). Rows are named ``workload [MODE]`` and ``workload xK``.

Examples::

    python benchmarks/bench_paper_profile.py --device cuda --out bench_paper_profile.json
    python benchmarks/bench_paper_profile.py --device cpu --quick    # smoke test, about a minute
    python benchmarks/bench_paper_profile.py --device cuda --workloads ft,cliperase --compile inductor --stacked 4
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from clipunlearn.calibration import make_batch, time_calls

#: Dense peak TFLOP/s by device name (first matching substring wins; None: not known here).
PEAKS = (
    ("H100 NVL", None),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7}),  # SXM
    ("H200 NVL", None),
    ("H200", {"bf16": 989.4, "tf32": 494.7}),
    ("A100", {"bf16": 312.0, "tf32": 156.0}),
)
WORKLOADS = ("ft", "cliperase", "lipschitz", "synthetic", "eval")
#: Batch sizes per workload: CLIPErase trains with 16, paper B with 64; evaluation uses 128.
BATCHES = {"ft": (16, 64), "cliperase": (16, 64), "lipschitz": (64,), "synthetic": (64,), "eval": (128,)}
QUICK_BATCH = 2


def get_peak(device: torch.device) -> dict | None:
    """Return ``{"bf16", "tf32"}`` dense peak TFLOP/s of ``device``, or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAKS:
        if key in name:
            return peak
    return None


def autocast(device: torch.device, precision: str):
    """bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: its backward hooks on module inputs break
    ``torch.autograd.grad`` with respect to the input images (the synthetic ascent); only totals are needed."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn) -> float:
    """Return the FLOPs ``fn()`` runs (matrix products, convolutions, attention; forward and backward).

    nn.MultiheadAttention's inference fast path (one fused op the counter does not know)
    is switched off while counting: the slow path computes the same products.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


def training_step(model, original, loss_fn, optimizer, forget, retain, *, device, precision, kwargs, compile=""):
    """Return a closure running one unlearning step (forward + backward + Adam), its loss compiled as ``compile``
    says (``unlearning.compile_loss``)."""
    from clipunlearn.unlearning import compile_loss

    step_loss = compile_loss(loss_fn, compile)

    def step():
        with autocast(device, precision):
            loss, _ = step_loss(model, original, forget, retain, kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def training_batches(workload, tokenizer, *, batch, device, args) -> tuple[dict, dict, dict, int]:
    """Return the forget and retain batches, the loss settings and the images a step trains on."""
    forget = make_batch(tokenizer, size=batch, image_size=args.image_size, device=device, seed=1)
    retain = make_batch(tokenizer, size=batch, image_size=args.image_size, device=device, seed=2)
    kwargs = {"n_samples": args.n_samples} if workload == "lipschitz" else {}
    return forget, retain, kwargs, {"ft": batch, "cliperase": 2 * batch, "lipschitz": batch}[workload]


def run_training(workload, model, original, tokenizer, *, batch, device, precision, args, compile="") -> dict:
    from clipunlearn.losses import LOSSES

    forget, retain, kwargs, images = training_batches(workload, tokenizer, batch=batch, device=device, args=args)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6,
                                 fused=device.type in ("cuda", "cpu"))
    settings = dict(device=device, precision=precision, kwargs=kwargs)
    if compile:
        torch._dynamo.reset()  # a fresh compile per row: no row runs another's graphs or meets the recompile limit
    step = training_step(model, original, LOSSES[workload], optimizer, forget, retain, compile=compile, **settings)
    times = time_calls(step, device=device, warmup=max(1, args.warmup) if compile else args.warmup,
                       repeats=args.steps)
    flops = count_flops(training_step(model, original, LOSSES[workload], optimizer, forget, retain, **settings))
    del optimizer
    model.zero_grad(set_to_none=True)
    return {"images_per_step": images, "seconds": statistics.median(times), "flops": flops}


def run_stacked(workload, model, original, tokenizer, *, batch, runs, device, precision, args) -> dict:
    """Time one step of ``runs`` copies of ``model`` trained at once (``stacked_runs``); images of all runs."""
    from clipunlearn.clip import RequiresGrad
    from clipunlearn.losses import LOSSES
    from clipunlearn.stacked_runs import make_stacked_step, stack_runs

    forget, retain, kwargs, images = training_batches(workload, tokenizer, batch=batch, device=device, args=args)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)  # the FLOPs only
    flops = runs * count_flops(training_step(model, original, LOSSES[workload], optimizer, forget, retain,
                                             device=device, precision=precision, kwargs=kwargs))
    del optimizer
    model.zero_grad(set_to_none=True)
    stacked = stack_runs(model, [1e-6] * runs)
    step = make_stacked_step(model, stacked, method=workload, original=original, loss_kwargs=kwargs,
                             precision=precision)
    with RequiresGrad(model, only=()):  # the stacked weights get the gradients
        times = time_calls(lambda: step(forget, retain), device=device, warmup=args.warmup, repeats=args.steps)
    return {"images_per_step": runs * images, "seconds": statistics.median(times), "flops": flops}


@contextlib.contextmanager
def encoder_autocast(model, device, precision):
    """bf16: autocast inside ``model.encode_image`` only, returning float32 features.

    ``synthetic.generate_synthetic`` keeps its images in float32 and writes the blurred
    batch back into them, which fails when the whole call runs under autocast (the blur
    then returns bf16), so only the encoder runs in bf16.
    """
    if precision != "bf16":
        yield
        return
    encode = model.encode_image

    def encode_bf16(images, *args, **kwargs):
        with autocast(device, precision):
            return encode(images, *args, **kwargs).float()

    model.encode_image = encode_bf16
    try:
        yield
    finally:
        del model.encode_image  # the class's method again


def run_synthetic(model, *, batch, device, precision, args) -> dict:
    from clipunlearn import models, synthetic

    mean, std = models.get_normalization(model)
    weights = torch.nn.functional.normalize(torch.randn(model.visual.output_dim, 10), dim=0).to(device)

    def generate(steps: int):
        with encoder_autocast(model, device, precision):
            synthetic.generate_synthetic(model, weights, classes=[0], n_per_class=batch, image_size=args.image_size,
                                         mean=mean, std=std, steps=steps, thresholds=1.01, patience=0,
                                         batch_size=batch, seed=0, device=device, progress=False)

    n = args.steps
    generate(max(1, args.warmup))  # warm-up
    one = time_calls(lambda: generate(1), device=device, warmup=0, repeats=1)[0]
    many = time_calls(lambda: generate(1 + n), device=device, warmup=0, repeats=1)[0]
    per_step = (many - one) / n if many > one else many / (1 + n)
    flops = count_flops(lambda: generate(2)) - count_flops(lambda: generate(1))
    return {"images_per_step": batch, "seconds": per_step, "flops": flops}


def run_eval(model, *, batch, device, precision, args) -> dict:
    images = torch.randn(batch, 3, args.image_size, args.image_size, device=device)

    @torch.no_grad()
    def step():
        with autocast(device, precision):
            model.encode_image(images)

    times = time_calls(step, device=device, warmup=args.warmup, repeats=args.steps)
    return {"images_per_step": batch, "seconds": statistics.median(times), "flops": count_flops(step)}


def run_row(workload, model, original, tokenizer, *, batch, device, precision, args, compile="", runs=0) -> dict:
    """Time one (workload, batch, precision) on ``model``, its loss compiled as ``compile`` says or ``runs`` runs at
    once (0: one ordinary run); errors (e.g. out of memory) are recorded."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if workload == "synthetic":
            out = run_synthetic(model, batch=batch, device=device, precision=precision, args=args)
        elif workload == "eval":
            out = run_eval(model, batch=batch, device=device, precision=precision, args=args)
        elif runs:
            out = run_stacked(workload, model, original, tokenizer, batch=batch, runs=runs, device=device,
                              precision=precision, args=args)
        else:
            out = run_training(workload, model, original, tokenizer, batch=batch, device=device,
                               precision=precision, args=args, compile=compile)
    except torch.cuda.OutOfMemoryError as err:
        model.zero_grad(set_to_none=True)
        return {"error": f"out of memory: {str(err).splitlines()[0]}"}
    except Exception as err:  # noqa: BLE001  (one failing row must not end a paid GPU run)
        model.zero_grad(set_to_none=True)
        return {"error": f"{type(err).__name__}: {err}"}
    out["images_per_s"] = out["images_per_step"] / out["seconds"]
    out["ms_per_step"] = 1000 * out["seconds"]
    out["tflops"] = out["flops"] / out["seconds"] / 1e12
    out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    peak = get_peak(device)
    out["fraction_of_peak"] = out["tflops"] / peak["bf16" if precision == "bf16" else "tf32"] if peak else None
    return out


def row_name(row: dict) -> str:
    """The workload of a row as the table names it: ``ft``, ``ft [inductor]`` (compiled), ``ft x4`` (4 runs at once)."""
    if row.get("runs"):
        return f"{row['workload']} x{row['runs']}"
    return f"{row['workload']} [{row['compile']}]" if row.get("compile") else row["workload"]


def format_table(rows: list[dict]) -> str:
    """Return the rows as an aligned text table."""
    head = ("model", "precision", "workload", "batch", "img/step", "ms/step", "img/s", "peak GiB", "TFLOP/step",
            "TFLOP/s", "% of peak")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append((r["model"], r["precision"], row_name(r), str(r["batch"]), "error", *["-"] * 6))
            continue
        lines.append((r["model"], r["precision"], row_name(r), str(r["batch"]), str(r["images_per_step"]),
                      f"{r['ms_per_step']:.1f}", f"{r['images_per_s']:.1f}",
                      "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}",
                      f"{r['flops'] / 1e12:.3f}", f"{r['tflops']:.1f}",
                      "unknown" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)
    errors = [f"{r['model']} {r['precision']} {row_name(r)} {r['batch']}: {r['error']}" for r in rows if "error" in r]
    return text + "".join(f"\nerror: {e}" for e in errors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--models", default="RN50,ViT-B-16", help="open_clip architectures, comma-separated")
    parser.add_argument("--precisions", default="", help="fp32,bf16 (default: both on cuda, fp32 on cpu)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of the workloads")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (the models' 224)")
    parser.add_argument("--n-samples", type=int, default=25, help="noise samples per image of the Lipschitz loss")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: batch {QUICK_BATCH}, 1 warm-up and 1 timed step, 2 noise samples")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", default="", help="compile the training rows' loss: inductor, cudagraphs (CUDA) "
                        "or aot_eager (unlearning.COMPILE_MODES; empty: eager)")
    parser.add_argument("--stacked", type=int, default=0, help="also time ft and cliperase with K runs at once, "
                        "beside 1 run (0: not)")
    parser.add_argument("--out", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import open_clip

    from clipunlearn.models import copy_frozen
    from clipunlearn.unlearning import check_compile

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.quick:
        args.warmup, args.steps, args.n_samples = 1, 1, min(args.n_samples, 2)
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if device.type == "cuda"
                                                                     else ["fp32"])
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS] + [p for p in precisions if p not in ("fp32", "bf16")]
    if unknown:
        parser.error(f"unknown workload / precision {unknown}; workloads: {', '.join(WORKLOADS)}; "
                     "precisions: fp32, bf16")
    try:
        check_compile(args.compile, device)
    except ValueError as err:
        parser.error(str(err))
    if args.stacked < 0:
        parser.error(f"--stacked must be a number of runs >= 0, got {args.stacked}")
    stacked = sorted({1, args.stacked}) if args.stacked else []
    torch.set_float32_matmul_precision("high")  # TF32 matrix products in fp32
    torch.backends.cudnn.allow_tf32 = True  # and TF32 convolutions
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = get_peak(device)
    peak_text = "unknown" if peak is None else f"bf16 {peak['bf16']:.0f} / TF32 {peak['tf32']:.0f} TFLOP/s"
    print(f"device: {name}; torch {torch.__version__}; open_clip {open_clip.__version__}; dense peak {peak_text}; "
          f"{args.warmup} warm-up + {args.steps} timed steps; image {args.image_size} px; "
          f"Lipschitz n_samples {args.n_samples}; compile {args.compile or 'no'}; stacked runs "
          f"{','.join(map(str, stacked)) or 'no'}", flush=True)

    rows = []
    for arch in args.models.split(","):
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None, device=device).eval()  # the unlearning loop's mode
        original = copy_frozen(model) if "cliperase" in workloads else None
        tokenizer = open_clip.get_tokenizer(arch)
        for precision in precisions:
            for workload in workloads:
                training = workload in ("ft", "cliperase", "lipschitz")
                variants = [{"compile": args.compile} if training and args.compile else {}]
                variants += [{"runs": k} for k in stacked if workload in ("ft", "cliperase")]
                for batch in ((QUICK_BATCH,) if args.quick else BATCHES[workload]):
                    for variant in variants:
                        start = time.perf_counter()
                        row = {"model": arch, "precision": precision, "workload": workload, "batch": batch,
                               **variant, **run_row(workload, model, original, tokenizer, batch=batch,
                                                    device=device, precision=precision, args=args, **variant)}
                        rows.append(row)
                        status = row.get("error") or f"{row['images_per_s']:.1f} img/s"
                        print(f"  {arch} {precision} {row_name(row)} batch {batch}: {status} "
                              f"({time.perf_counter() - start:.1f} s)", flush=True)
        del model, original
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print(format_table(rows))
    if args.out:
        from clipunlearn.results import write_json_atomic

        path = write_json_atomic(args.out, {
            "device": name, "torch": torch.__version__, "open_clip": open_clip.__version__, "peak_tflops": peak,
            "settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows})
        print(f"\nwrote {Path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
