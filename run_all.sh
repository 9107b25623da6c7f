#!/usr/bin/env bash
# Run every notebook, in order, with papermill: the main job of this repo.
# See ./run_all.sh --help. Sources are never modified: executed copies go to
# runs/<profile>/ (runs/quick-<profile>/ with --quick), logs to .../logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILES=(mini paper)   # keep in sync with clipunlearn.paths.PROFILES
TAIL_LINES=40

usage() {
    cat <<EOF
Usage: ./run_all.sh [options]

Set up the environment (scripts/setup_env.sh), then execute every
notebooks/[0-9][0-9]_*.ipynb in order with papermill, passing
-p PROFILE <profile> -p QUICK <True|False>. Executed notebooks go to
runs/<profile>/ (runs/quick-<profile>/ with --quick) and logs to its logs/.
Stops at the first failing notebook and prints the tail of its log.

A notebook is skipped ("up to date") when its executed copy exists, the run
started after the last change of the source notebook and of every file in
lib/clipunlearn/, and it ran with the same parameters.

Options:
  --profile NAME     profile to run: ${PROFILES[*]} (default: mini)
  --only PATTERN     run only notebooks whose stem matches PATTERN (glob, or
                     substring); repeatable, e.g. --only 03 --only 'a_*'
  --force            re-run notebooks even if up to date
  --quick            smoke-test mode: -p QUICK True (results go to
                     results/quick-<profile>/, not committed)
  --cluster WHERE    run each notebook's matrix of runs on Ray (pip extra
                     [cluster]; notebooks 10 and 45): auto (Ray on this machine:
                     a GPU a run in the paper profile, a CPU a run in mini) or
                     ray://HOST:PORT (a cluster started with ray start); records
                     are those of the serial run, finished runs are kept on
                     rerun (-p CLUSTER WHERE to the notebooks that declare it;
                     README: "Many GPUs"). Without it the mini profile
                     already runs notebooks 10's and 45's runs one torch
                     thread each, as many at once as it has threads, on a
                     local Ray instance (the same records as in turn)
  --plan             print what the run would do and stop: paper profile, per
                     notebook the runs, steps and images and the time expected
                     on this machine's device (one step of each kind timed, with
                     random weights; python -m clipunlearn plan --help); mini
                     profile, the times of the last complete run
  --retrained-mini SEED
                     mini profile: use a mini CLIP retrained here with training
                     seed SEED (trained on first use, ~4 min; cached) instead of
                     the shipped one; results and figures go to
                     results/mini-seedSEED/ and figures/mini-seedSEED/
  -p NAME VALUE      extra papermill parameter (repeatable); NAME must be declared
                     by a notebook to run (its parameters cell), else the run stops
                     with the list of each notebook's parameters
  -h, --help         show this help and exit

Every run uses the same number of CPU threads (OMP_NUM_THREADS and
MKL_NUM_THREADS; default 2, CLIPUNLEARN_THREADS=N changes it): torch sums in
an order that depends on it, and the committed results ran with 2 (each run
of notebooks 10's and 45's matrices with 1, wherever it runs).

Environment: CLIPUNLEARN_NO_VENV=1 uses the current python instead of .venv
(Colab, conda); see scripts/setup_env.sh.
EOF
}

die() { echo "run_all.sh: $*" >&2; exit 2; }

# --- arguments (parsed before any set-up, so errors are instant) ------------
profile=mini; force=0; quick=0; plan=0; cluster=""; only=(); extra=(); mini_seed="${CLIPUNLEARN_MINI_SEED:-}"
while (($#)); do
    case "$1" in
        --profile)   (($# >= 2)) || die "--profile needs a value"; profile="$2"; shift 2 ;;
        --profile=*) profile="${1#*=}"; shift ;;
        --only)      (($# >= 2)) || die "--only needs a pattern"; only+=("$2"); shift 2 ;;
        --only=*)    only+=("${1#*=}"); shift ;;
        --force)     force=1; shift ;;
        --quick)     quick=1; shift ;;
        --plan)      plan=1; shift ;;
        --cluster)   (($# >= 2)) || die "--cluster needs auto or ray://HOST:PORT"; cluster="$2"; shift 2 ;;
        --cluster=*) cluster="${1#*=}"; shift ;;
        --retrained-mini) (($# >= 2)) || die "--retrained-mini needs a training seed"; mini_seed="$2"; shift 2 ;;
        --retrained-mini=*) mini_seed="${1#*=}"; shift ;;
        -p)          (($# >= 3)) || die "-p needs NAME VALUE"; extra+=(-p "$2" "$3"); shift 3 ;;
        -h|--help)   usage; exit 0 ;;
        *)           die "unknown option '$1' (see --help)" ;;
    esac
done
[[ -z "$cluster" || "$cluster" == auto || "$cluster" == ray://* ]] \
    || die "unknown --cluster '$cluster'; valid: auto (Ray on this machine), ray://HOST:PORT (an existing Ray cluster)"
[[ " ${PROFILES[*]} " == *" $profile "* ]] \
    || die "unknown profile '$profile'; valid profiles: ${PROFILES[*]}"
[[ -z "$mini_seed" || "$mini_seed" == shipped || "$mini_seed" =~ ^[0-9]+$ ]] \
    || die "--retrained-mini needs a training seed (an integer >= 0), not '$mini_seed'"
[[ "$mini_seed" == shipped ]] && mini_seed=""
[[ -n "$mini_seed" && "$profile" != mini ]] && die "--retrained-mini is for the mini profile only"
threads="${CLIPUNLEARN_THREADS:-2}"
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "CLIPUNLEARN_THREADS must be a positive integer, not '$threads'"

# --- notebooks to run --------------------------------------------------------
matches() {  # stem matches one of the --only patterns (or there are none)
    ((${#only[@]} == 0)) && return 0
    local pat
    for pat in "${only[@]}"; do
        # shellcheck disable=SC2053  # unquoted on purpose: glob match
        [[ "$1" == $pat || "$1" == *"$pat"* ]] && return 0
    done
    return 1
}
notebooks=()
for nb in "$ROOT"/notebooks/[0-9][0-9]_*.ipynb; do
    [[ -f "$nb" ]] && matches "$(basename "$nb" .ipynb)" && notebooks+=("$nb")
done
if ((${#notebooks[@]} == 0)); then
    ((${#only[@]})) && die "no notebook matches --only ${only[*]}"
    die "no notebooks found in notebooks/ (expected notebooks/NN_name.ipynb)"
fi

# --- every -p NAME must be a parameter some notebook to run declares ----------
declared() {  # the names in a notebook's cell tagged "parameters" (NAME: type = value  # help)
    grep -oE '^ *"[A-Z][A-Z0-9_]*: (str|bool|int|float) = ' "$1" | sed -E 's/^ *"([A-Z0-9_]+):.*/\1/'
}
for ((k = 1; k < ${#extra[@]}; k += 3)); do
    name="${extra[k]}"; found=0
    for nb in "${notebooks[@]}"; do declared "$nb" | grep -qx -- "$name" && found=1; done
    if ((!found)); then
        msg="no notebook to run declares the parameter '$name'; their parameters:"
        for nb in "${notebooks[@]}"; do msg+=$'\n'"  $(basename "$nb" .ipynb): $(declared "$nb" | tr '\n' ' ')"; done
        die "$msg"
    fi
done

# --- set-up: environment, package, data; exports PYTHON ----------------------
# shellcheck source=scripts/setup_env.sh
export CLIPUNLEARN_PROFILE="$profile"  # paper: a new .venv keeps a torch that already uses the GPU
source "$ROOT/scripts/setup_env.sh"

# the same thread count for every notebook: results depend on it in their last bits
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
if ((plan)); then
    plan_args=(--profile "$profile"); ((quick)) && plan_args+=(--quick)
    for pat in "${only[@]}"; do plan_args+=(--only "$pat"); done
    exec "$PYTHON" -m clipunlearn plan "${plan_args[@]}"
fi
if [[ "$profile" == paper ]]; then  # a GPU this torch cannot use (its CUDA newer than the driver): stop now
    "$PYTHON" -m clipunlearn env --check-gpu || die "torch cannot use this machine's GPU (above); fix it, or run on the CPU with CUDA_VISIBLE_DEVICES= (hours: see --plan)"
fi
if [[ -n "$mini_seed" ]]; then export CLIPUNLEARN_MINI_SEED="$mini_seed"; else unset CLIPUNLEARN_MINI_SEED; fi
run_name="$profile${mini_seed:+-seed$mini_seed}"; ((quick)) && run_name="quick-$run_name"
out_dir="$ROOT/runs/$run_name"
mkdir -p "$out_dir/logs"
params=(-p PROFILE "$profile" -p QUICK "$( ((quick)) && echo True || echo False)" "${extra[@]}")
params_hash="$(printf '%s\n' "${params[@]}" "threads=$threads" "mini_seed=$mini_seed" | sha256sum | cut -d' ' -f1)"

# Up to date = executed copy exists, stamp has the same parameters, and the
# stamp's mtime (= when that run started) is newer than the source notebook
# and every library file (bytecode caches excluded).
up_to_date() {  # source_nb output_nb stamp
    [[ -f "$2" && -f "$3" && "$(cat "$3")" == "$params_hash" && "$3" -nt "$1" ]] || return 1
    [[ -z "$(find "$ROOT/lib/clipunlearn" -type f -newer "$3" \
        -not -path '*/__pycache__/*' -not -name '*.pyc' -print -quit)" ]]
}

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

model_note="shipped mini CLIP"; [[ -n "$mini_seed" ]] && model_note="mini CLIP retrained with seed $mini_seed"
[[ "$profile" == mini ]] || model_note="paper weights"
echo "run_all: profile=$run_name ($model_note, $threads CPU threads), ${#notebooks[@]} notebook(s) -> ${out_dir#"$ROOT"/}/"
total_start=$SECONDS
for i in "${!notebooks[@]}"; do
    src="${notebooks[$i]}"
    stem="$(basename "$src" .ipynb)"
    out="$out_dir/$stem.ipynb"
    log="$out_dir/logs/$stem.log"
    stamp="$out_dir/logs/$stem.stamp"
    printf '[%d/%d] %-40s ' $((i + 1)) ${#notebooks[@]} "$stem"
    if ((!force)) && up_to_date "$src" "$out" "$stamp"; then
        echo "up to date, skipped"
        continue
    fi
    rm -f "$stamp"
    echo "$params_hash" >"$stamp.tmp"      # its mtime records the start of this run
    start=$SECONDS
    nb_params=("${params[@]}")  # the cluster changes where runs execute, not the records: not in the stamp
    [[ -n "$cluster" ]] && declared "$src" | grep -qx CLUSTER && nb_params+=(-p CLUSTER "$cluster")
    if "$PYTHON" -m papermill "$src" "$out" "${nb_params[@]}" --cwd "$ROOT/notebooks" \
        --log-output --no-progress-bar >"$log" 2>&1; then
        mv "$stamp.tmp" "$stamp"
        echo "ok ($(fmt_time $((SECONDS - start))))"
    else
        rm -f "$stamp.tmp"
        echo "FAILED ($(fmt_time $((SECONDS - start))))"
        echo "----- last $TAIL_LINES lines of ${log#"$ROOT"/} -----"
        tail -n "$TAIL_LINES" "$log"
        echo "-----"
        echo "partially executed notebook: ${out#"$ROOT"/}"
        exit 1
    fi
done
echo "run_all: all done in $(fmt_time $((SECONDS - total_start))); executed notebooks in ${out_dir#"$ROOT"/}/"
