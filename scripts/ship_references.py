"""Ship the benchmark's retrained references with the package, as the shipped mini CLIP ships.

    python scripts/ship_references.py            # from the model cache (training a missing one: minutes each)
    python scripts/ship_references.py --check    # list what ships and whether it loads; write nothing

For each benchmark task (``methods.retrain.RETRAIN_TARGETS``) the mini CLIP retrained with the shipped recipe
without the task's forget images (``methods.retrain.retrain_exclusion``) is written to
``lib/clipunlearn/model_weights/references/<cache key>/`` as its difference from the shipped model
(``checkpoints.write_shipped_reference``). ``models.get_mini_clip`` then loads it from there on every machine,
instead of training it on first use: CPUs of other kinds train slightly different weights from the same seed.
A maintainer's step, after retraining the shipped model or changing the recipe; the committed results must then
be regenerated.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from clipunlearn import checkpoints, data, models  # noqa: E402
from clipunlearn.methods.retrain import RETRAIN_TARGETS, retrain_exclusion  # noqa: E402
from clipunlearn.papers.benchmark_tasks import build_benchmark_tasks  # noqa: E402
from clipunlearn.paths import get_cache_dir  # noqa: E402


def reference_keys(*, data_dir=None) -> dict[str, tuple[str, dict]]:
    """Return ``{target: (cache key, exclusion)}`` of the benchmark's retrained references."""
    train, test = data.load_mini_world(data_dir=data_dir)
    tasks = build_benchmark_tasks(train, test, tasks=RETRAIN_TARGETS, seeds=[0], n_seen=models.MINI_SEEN_IMAGES)
    out = {}
    for kind, target in RETRAIN_TARGETS.items():
        exclude = retrain_exclusion(tasks[kind][target][0])
        out[target] = (models._mini_key("mini", {**models.MINI_TRAINING, "exclude": exclude}), exclude)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list what ships and whether it loads; write nothing")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the project's)")
    args = parser.parse_args(argv)
    base = checkpoints.load_checkpoint(checkpoints.verify_shipped("mini")[0])
    for target, (key, exclude) in reference_keys(data_dir=args.data_dir).items():
        if args.check:
            found = checkpoints.load_shipped_reference(key, base)
            print(f"{target}: {key} {'ships' if found else 'does not ship'}"
                  + (f" ({found[1]['bytes'] / 1e6:.1f} MB, model {found[1]['fingerprint']})" if found else ""))
            continue
        shipped = checkpoints.REFERENCES_DIR / key
        if shipped.exists():  # write from the cache (or a fresh training), never from the shipped copy itself
            shutil.rmtree(shipped)
        model, _, _, info = models.get_mini_clip(exclude=exclude, progress=True)
        info = {k: v for k, v in info.items() if k not in ("path", "source")}
        delta = checkpoints.write_shipped_reference(key, model.state_dict(), info, base)
        print(f"{target}: {delta.relative_to(ROOT)} ({delta.stat().st_size / 1e6:.1f} MB) from "
              f"{get_cache_dir() / 'models' / key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
