#!/usr/bin/env bash
# Set up the Python environment and the default data for clipunlearn.
#
#   source scripts/setup_env.sh   # what run_all.sh / run_tests.sh do; exports PYTHON
#   bash scripts/setup_env.sh     # just set up
#
# Idempotent and quiet; each step is skipped when already done:
#   1. environment: use the active virtualenv / conda env (or the current python
#      when CLIPUNLEARN_NO_VENV=1, e.g. on Colab); otherwise create ./.venv with
#      the first Python >= 3.11 found ($CLIPUNLEARN_PYTHON, python3, python3.13,
#      python3.12, python3.11). The pinned numpy, pandas, scikit-learn, matplotlib
#      and ipykernel need Python >= 3.11.
#   2. install `-e .[test,notebooks,cluster]` with `-c constraints.txt` (every transitive
#      version pinned) when pyproject.toml or constraints.txt changed since the last
#      install (stamp file with their hash, inside .venv). On Colab only what is
#      missing is installed (scripts/colab_install.sh: Colab's torch, numpy, pandas
#      and ipykernel stay); in another foreign env that already has torch,
#      torch/torchvision are kept (pinned to the installed versions) and the other
#      pinned deps installed. For the paper profile (CLIPUNLEARN_PROFILE=paper, set
#      by run_all.sh), a new .venv on a machine whose python already has a torch
#      that uses the GPU is made with --system-site-packages and keeps that torch.
#   3. Fashion-MNIST from Debian (apt-get install dataset-fashion-mnist) when
#      root, apt exists and the files are missing.
#   4. default data: python -m clipunlearn data --fetch
#
# Environment: CLIPUNLEARN_NO_VENV=1 (use the current python),
#              CLIPUNLEARN_PYTHON=/path/to/python3.11 (interpreter for a new .venv),
#              CLIPUNLEARN_SKIP_DATA=1 (skip steps 3 and 4).
# Exports PYTHON (the interpreter to use) and puts its bin/ first on PATH.
# Everything here is prefixed _cu_ because the file is usually sourced.

_cu_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_cu_say() { echo "setup: $*"; }
_cu_err() { echo "setup: ERROR: $*" >&2; }
_cu_need_py="3.11"
_cu_py_hint="install Python >= $_cu_need_py (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; or conda env create -f environment.yml) and point CLIPUNLEARN_PYTHON at it, then re-run"
# true when "$1" is a Python >= 3.11
_cu_py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
# print the first Python >= 3.11 among $CLIPUNLEARN_PYTHON, python3, python3.13, python3.12, python3.11
_cu_find_python() {
    local cand path
    for cand in "${CLIPUNLEARN_PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [[ -n "$cand" ]] || continue
        path="$(command -v "$cand" 2>/dev/null)" || continue
        _cu_py_ok "$path" && { echo "$path"; return 0; }
    done
    return 1
}

# 1. Pick (or create) the environment; sets PYTHON and _cu_state (stamp/log dir).
_cu_pick_env() {
    local foreign=""
    if [[ "${CLIPUNLEARN_NO_VENV:-0}" != 0 ]]; then foreign="CLIPUNLEARN_NO_VENV"
    elif [[ -n "${COLAB_RELEASE_TAG:-}" ]]; then foreign="Colab"
    elif [[ -n "${VIRTUAL_ENV:-}" && "$(cd "$VIRTUAL_ENV" 2>/dev/null && pwd)" != "$_cu_root/.venv" ]]; then
        foreign="virtualenv $VIRTUAL_ENV"
    elif [[ -n "${CONDA_PREFIX:-}" && "${CONDA_DEFAULT_ENV:-base}" != base ]]; then
        foreign="conda env ${CONDA_DEFAULT_ENV}"
    fi

    if [[ -n "$foreign" ]]; then
        PYTHON="$(command -v python || command -v python3 || true)"
        [[ -n "$PYTHON" ]] || { _cu_err "no python found on PATH"; return 1; }
        _cu_state="$_cu_root/.cache/setup"     # git-ignored
        _cu_foreign=1
        _cu_say "using $foreign ($PYTHON)"
    else
        local venv="$_cu_root/.venv"
        if [[ ! -x "$venv/bin/python" ]]; then
            [[ -e "$venv" ]] && { _cu_err "$venv exists but has no bin/python; remove it and re-run"; return 1; }
            local py3; py3="$(_cu_find_python)" || {
                _cu_err "no Python >= $_cu_need_py found (python3 is $(python3 -V 2>&1 || echo missing)): the pinned numpy, pandas, scikit-learn, matplotlib and ipykernel need it; $_cu_py_hint"
                return 1
            }
            local venv_args=()
            if [[ "${CLIPUNLEARN_PROFILE:-}" == paper ]] && "$py3" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
                # a GPU box whose python already has a working CUDA torch: the venv sees it and keeps it
                venv_args=(--system-site-packages)
                _cu_say "$py3 has torch $("$py3" -c 'import torch; print(torch.__version__)' 2>/dev/null) and it uses the GPU: .venv keeps it (--system-site-packages)"
            fi
            _cu_say "creating virtualenv .venv with $("$py3" -V 2>&1)"
            "$py3" -m venv "${venv_args[@]}" "$venv" || { _cu_err "$py3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv, or python3.X-venv for $("$py3" -V 2>&1))"; return 1; }
            ((${#venv_args[@]})) && touch "$venv/.clipunlearn-keeps-torch"
        fi
        PYTHON="$venv/bin/python"
        _cu_state="$venv"
        _cu_foreign=0
        export VIRTUAL_ENV="$venv"
        export PATH="$venv/bin:$PATH"
    fi
    if ! _cu_py_ok "$PYTHON"; then
        if [[ "$_cu_foreign" == 0 ]]; then
            _cu_err "$_cu_root/.venv uses $("$PYTHON" -V 2>&1), but Python >= $_cu_need_py is needed: remove .venv and re-run (or $_cu_py_hint)"
        else
            _cu_err "$PYTHON is $("$PYTHON" -V 2>&1), but Python >= $_cu_need_py is needed: the pinned numpy, pandas, scikit-learn, matplotlib and ipykernel need it; activate an environment with Python >= $_cu_need_py (e.g. conda env create -f environment.yml) and re-run"
        fi
        return 1
    fi
    export PYTHON
    mkdir -p "$_cu_state"
}

# 2. pip install -c constraints.txt -e .[test,notebooks,cluster] unless the stamp says nothing changed.
_cu_install() {
    local want stamp="$_cu_state/.clipunlearn-install.sha256" log="$_cu_state/clipunlearn-pip.log"
    local constraints="$_cu_root/constraints.txt"
    # hash of pyproject.toml + constraints.txt + repo path + interpreter prefix
    want="$( { cat "$_cu_root/pyproject.toml" "$constraints" 2>/dev/null; echo "$_cu_root"
               "$PYTHON" -c 'import sys; print(sys.prefix)'; } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("clipunlearn") is None)' 2>/dev/null; then
        return 0
    fi
    rm -f "$stamp"
    local pip=("$PYTHON" -m pip install --disable-pip-version-check -q)
    [[ -f "$constraints" ]] || { _cu_err "$constraints is missing (restore it with git checkout)"; return 1; }
    if [[ "$_cu_foreign" == 1 && ( -n "${COLAB_RELEASE_TAG:-}" || "${CLIPUNLEARN_FORCE_COLAB:-0}" == 1 ) ]]; then
        # Colab: install only what is missing, never its torch / numpy / pandas / ipykernel
        _cu_say "Colab: installing what is missing, keeping Colab's packages (log: $log)"
        PYTHON="$PYTHON" bash "$_cu_root/scripts/colab_install.sh" --no-data --extras notebooks,test >"$log" 2>&1
    elif [[ "$_cu_foreign" == 1 || -f "$_cu_state/.clipunlearn-keeps-torch" ]] \
        && "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null; then
        # an env with torch already there (foreign, or a .venv made on a GPU box): keep its torch/torchvision,
        # pinned to what is installed so that pip picks a matching torchvision instead of replacing torch
        local keep; keep="$("$PYTHON" -c 'import importlib.metadata as m
for d in ("torch", "torchvision"):
    try: print(f"{d}=={m.version(d)}")
    except m.PackageNotFoundError: pass')"
        _cu_say "installing clipunlearn[test,notebooks,cluster], keeping the installed $(echo $keep) (log: $log)"
        local deps kept="$_cu_state/constraints-without-torch.txt"
        { grep -v -i -E '^(torch|torchvision)==' "$constraints"; echo "$keep"; } >"$kept"
        mapfile -t deps < <("$PYTHON" - "$_cu_root/pyproject.toml" <<'EOF'
import re, sys
import tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
for dep in project["dependencies"] + extras["test"] + extras["notebooks"] + extras["cluster"]:
    if re.split(r"[^A-Za-z0-9_.-]", dep)[0].lower() not in ("torch", "torchvision"):
        print(dep)
EOF
        )
        { "${pip[@]}" -c "$kept" "${deps[@]}" && "${pip[@]}" --no-deps -e "$_cu_root"; } >"$log" 2>&1
    else
        _cu_say "installing clipunlearn[test,notebooks,cluster] with the versions of constraints.txt (log: $log)"
        "${pip[@]}" -c "$constraints" -e "${_cu_root}[test,notebooks,cluster]" >"$log" 2>&1
    fi || { tail -n 30 "$log" >&2; _cu_err "pip install failed, see $log"; return 1; }
    echo "$want" >"$stamp"
    _cu_say "install done"
}

# 3. Fashion-MNIST from Debian, when possible (otherwise step 4 downloads it).
_cu_debian_fashion_mnist() {
    local dir=/usr/share/datasets/fashion-mnist log="$_cu_state/apt.log"
    [[ -f "$dir/train-images-idx3-ubyte.gz" && -f "$dir/t10k-labels-idx1-ubyte.gz" ]] && return 0
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null || return 0
    _cu_say "installing Debian package dataset-fashion-mnist (log: $log)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }
    } >"$log" 2>&1 || _cu_say "apt-get failed; the data will be downloaded instead"
}

# 4. Default data via the library (idempotent there).
_cu_fetch_data() {
    if ! "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("clipunlearn.data") is None)' 2>/dev/null; then
        _cu_say "clipunlearn.data not found; skipping the data fetch"
        return 0
    fi
    "$PYTHON" -m clipunlearn data --fetch \
        || { _cu_err "data fetch failed; retry with: $PYTHON -m clipunlearn data --fetch"; return 1; }
}

_cu_setup() {
    _cu_pick_env && _cu_install || return 1
    if [[ "${CLIPUNLEARN_SKIP_DATA:-0}" == 0 ]]; then
        _cu_debian_fashion_mnist && _cu_fetch_data || return 1
    fi
}

# Python 3.11 kernels otherwise warn about frozen modules and the debugger.
export PYDEVD_DISABLE_FILE_VALIDATION=1

# Last command: its status is the script's exit status, or the `source` status.
_cu_setup
