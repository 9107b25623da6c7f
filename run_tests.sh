#!/usr/bin/env bash
# The test command: notebook hygiene, unit tests, every notebook in quick mode
# under nbval, and the paper-profile smoke test. See ./run_tests.sh --help.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NB_PREPARED="runs/test-notebooks"   # parameterised copies for nbval (git-ignored)
CELL_TIMEOUT=1800                   # seconds per notebook cell

usage() {
    cat <<EOF
Usage: ./run_tests.sh [--unit | --notebooks | --paper-smoke] [PYTEST_ARGS...]

Set up the environment (scripts/setup_env.sh), then
  1. nbstripout --verify --keep-id notebooks/*.ipynb  (no outputs in sources)
  2. pytest tests -n WORKERS --dist loadfile  (unit tests; WORKERS: one per core
     (nproc) or \$CLIPUNLEARN_TEST_WORKERS; 1: in turn, without pytest-xdist)
  3. nbval: each notebooks/NN_*.ipynb with -p PROFILE mini -p QUICK True
     injected by papermill --prepare-only into $NB_PREPARED/, then
     pytest --nbval-lax $NB_PREPARED   (cells must run without error)
  4. scripts/paper_smoke.py: the paper branch of every notebook that has one, in
     quick mode on tiny random-weight models and the real images of ../shared/data,
     to written records (skipped with a message where ../shared/data is missing)

Options:
  --unit         only step 2
  --notebooks    only steps 1, 3 and 4
  --paper-smoke  only step 4
  -h, --help     show this help and exit
Other arguments go to both pytest runs, e.g. ./run_tests.sh -k data -x

Exit status: pytest's (0 ok, 1 failures, 5 nothing collected, ...).
EOF
}

do_unit=1; do_nb=1; do_smoke=1; modes=0; pytest_args=()
while (($#)); do
    case "$1" in
        --unit)        do_nb=0; do_smoke=0; modes=$((modes + 1)) ;;
        --notebooks)   do_unit=0; modes=$((modes + 1)) ;;
        --paper-smoke) do_unit=0; do_nb=0; modes=$((modes + 1)) ;;
        -h|--help)     usage; exit 0 ;;
        *)             pytest_args+=("$1") ;;
    esac
    shift
done
((modes <= 1)) || { echo "run_tests.sh: --unit, --notebooks and --paper-smoke exclude each other" >&2; exit 2; }

cd "$ROOT"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh"

# the peer the one evaluation is checked against (tests/test_peer_evaluation.py); --no-deps: its zero-shot
# module needs only torch, tqdm and scikit-learn, not the rest of its requirements (transformers, ...)
if ((do_unit)) && ! "$PYTHON" -c "import clip_benchmark" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-deps "clip-benchmark==1.6.2" \
        || echo "run_tests: could not install clip-benchmark; tests/test_peer_evaluation.py will be skipped" >&2
fi

rcs=()   # pytest exit codes of the parts that ran
shopt -s nullglob

if ((do_nb)); then
    all_nbs=(notebooks/*.ipynb)
    if ((${#all_nbs[@]})) && ! "$PYTHON" -m nbstripout --verify --keep-id "${all_nbs[@]}" >/dev/null; then
        echo "run_tests: some notebooks in notebooks/ contain outputs or execution metadata." >&2
        echo "run_tests: strip them with:  nbstripout notebooks/*.ipynb" >&2
        exit 1
    fi
fi

if ((do_unit)); then
    # one pytest-xdist worker per core (each takes one torch thread: tests/conftest.py); --dist loadfile keeps a
    # file's tests, their order and its module fixtures (the Ray tests' serial matrix) on one worker
    workers="${CLIPUNLEARN_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
    [[ "$workers" =~ ^[0-9]+$ && "$workers" -ge 1 ]] \
        || { echo "run_tests: CLIPUNLEARN_TEST_WORKERS must be a whole number >= 1 (1: in turn); got '$workers'" >&2; exit 2; }
    xdist=()
    if ((workers > 1)) && "$PYTHON" -c "import xdist" 2>/dev/null; then
        xdist=(-n "$workers" --dist loadfile)
    fi
    echo "=== unit tests: pytest tests ${xdist[*]} ==="
    set +e; "$PYTHON" -m pytest tests "${xdist[@]}" "${pytest_args[@]}"; rcs+=($?); set -e
fi

if ((do_nb)); then
    nbs=(notebooks/[0-9][0-9]_*.ipynb)
    echo "=== notebooks (quick mode): ${#nbs[@]} notebook(s) under nbval ==="
    if ((${#nbs[@]} == 0)); then
        echo "no notebooks/NN_*.ipynb to test"
        rcs+=(5)
    else
        rm -rf "$NB_PREPARED" && mkdir -p "$NB_PREPARED"
        for nb in "${nbs[@]}"; do
            "$PYTHON" -m papermill --prepare-only -p PROFILE mini -p QUICK True \
                "$nb" "$NB_PREPARED/$(basename "$nb")" >/dev/null 2>&1 \
                || { echo "run_tests: papermill could not prepare $nb" >&2; exit 1; }
        done
        # nbval starts each kernel in the prepared notebook's folder
        set +e
        "$PYTHON" -m pytest --nbval-lax --nbval-current-env \
            --nbval-cell-timeout="$CELL_TIMEOUT" "$NB_PREPARED" "${pytest_args[@]}"
        rcs+=($?)
        set -e
    fi
fi

if ((do_smoke)); then
    echo "=== paper profile smoke test: scripts/paper_smoke.py ==="
    set +e; "$PYTHON" scripts/paper_smoke.py; smoke_rc=$?; set -e
    rcs+=($((smoke_rc == 0 ? 0 : 1)))
fi

# Combined status: first real failure, else 0 if anything passed, else 5.
rc=5
for r in "${rcs[@]}"; do
    if ((r != 0 && r != 5)); then exit "$r"; fi
    ((r == 0)) && rc=0
done
exit "$rc"
