"""Would installing clipunlearn into an environment replace its torch? Ask pip without installing anything.

    python scripts/check_keeps_torch.py                  # the python running this script
    python scripts/check_keeps_torch.py --python /opt/conda/bin/python

Runs ``<python> -m pip install --dry-run --report <tmp> -e <repo>`` (the dependency ranges of pyproject.toml, no
constraints file: what set-up does in an environment that already has torch, plus pins of the installed torch and
torchvision) and prints what pip would install. Exit 0 when torch and torchvision would be kept, 1 when pip would
replace either (it names the versions), 2 when there is no torch to keep.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("torch", "torchvision")


def installed_versions(python: str) -> dict[str, str]:
    """Return ``{name: version}`` of torch and torchvision in ``python``'s environment (absent ones left out)."""
    code = ("import importlib.metadata as m, json\nout = {}\nfor d in %r:\n    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))") % (KEPT,)
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def planned_installs(python: str, *, pins: dict[str, str]) -> dict[str, str]:
    """Return ``{name: version}`` pip would install for ``-e <repo>`` with ``pins`` as constraints."""
    with tempfile.TemporaryDirectory() as tmp:
        constraints, report = Path(tmp) / "keep.txt", Path(tmp) / "report.json"
        constraints.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
        subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--dry-run",
                        "--report", str(report), "-c", str(constraints), "-e", str(ROOT)], check=True)
        data = json.loads(report.read_text())
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in data["install"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter of the environment to check")
    args = parser.parse_args(argv)
    have = installed_versions(args.python)
    if "torch" not in have:
        print(f"{args.python} has no torch: set-up installs the pinned one (constraints.txt)")
        return 2
    plan = planned_installs(args.python, pins=have)
    replaced = {k: v for k, v in plan.items() if k in KEPT}
    print(f"installed: {', '.join(f'{k} {v}' for k, v in have.items())}")
    print(f"pip would install {len(plan)} packages: {', '.join(f'{k} {v}' for k, v in sorted(plan.items()))}")
    if replaced:
        print(f"REPLACED: {', '.join(f'{k} {have.get(k)} -> {v}' for k, v in replaced.items())}")
        return 1
    print("kept: " + ", ".join(f"{k} {v}" for k, v in have.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
