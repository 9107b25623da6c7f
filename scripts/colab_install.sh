#!/usr/bin/env bash
# Install this repository where torch is already installed (Colab) without touching it:
# only the requirements that are missing are installed (never torch, torchvision, numpy,
# pandas, ipykernel or jupyter; see scripts/colab_setup.py), Fashion-MNIST is fetched,
# then the package itself is installed editable without dependencies, so new processes
# (papermill kernels, `python -m clipunlearn`) import it. Inside a running notebook use
# the notebooks' Colab cell instead: it needs no kernel restart.
#
#   bash scripts/colab_install.sh [--no-data]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
"$python" "$root/scripts/colab_setup.py" --repo-dir "$root" "$@"
"$python" -m pip install --disable-pip-version-check -q --no-deps -e "$root"
echo "clipunlearn installed; torch left as it was: $("$python" -c 'import torch; print(torch.__version__)')"
