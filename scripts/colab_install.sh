#!/usr/bin/env bash
# Install this repository on Colab (or any machine with a working torch) without
# reinstalling torch / torchvision: every other pinned dependency of pyproject.toml
# is installed, then the package itself (editable, no dependency resolution).
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import subprocess, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
keep = [d for d in deps if not d.split("==")[0].strip() in ("torch", "torchvision")]
subprocess.run([sys.executable, "-m", "pip", "install", "-q", *keep], check=True)
subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", "."], check=True)
PY
echo "clipunlearn installed; torch left as it was: $(python -c 'import torch; print(torch.__version__)')"
