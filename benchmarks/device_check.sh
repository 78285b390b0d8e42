#!/usr/bin/env bash
# The prepared GPU check (benchmarks/device_check.py says what each step checks; benchmarks/device_check.md how to
# read it). Prints the card, the time and each step's PASS/FAIL/SKIP line with its numbers; writes a JSON of results.
#
#   bash benchmarks/device_check.sh [--dry-run] [RESULTS.json] [options of device_check.py: --steps, --notebook-timeout]
#
# RESULTS.json: the argument ending in .json, else $OUT/device_check.json when $OUT is set, else
# runs/device_check.json (runs/device_check_dry.json for a dry run). With $OUT set, the log goes to
# $OUT/device_check.log and notebook 01's tables are copied beside the JSON.
# --dry-run (or DRY_RUN=1): the same steps on the CPU with tiny settings, one torch thread, about 30 s; make test runs it.
# Without --dry-run on a machine without CUDA every step says "skipped: no CUDA" and the exit status is 2.
# PYTHON=... picks the interpreter (default .venv/bin/python when present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=${DRY_RUN:-0}
json=
args=()
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        *.json) json=$arg ;;
        *) args+=("$arg") ;;
    esac
done
[ "$dry" = 0 ] || [ "$dry" = 1 ] || dry=1
if [ -z "$json" ]; then
    if [ -n "${OUT:-}" ]; then json=$OUT/device_check.json
    elif [ "$dry" = 1 ]; then json=runs/device_check_dry.json
    else json=runs/device_check.json
    fi
fi
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ "$dry" = 1 ]; then
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    args+=(--dry-run)
fi
log=/dev/null
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    log=$OUT/device_check.log
    args+=(--keep "$(dirname "$json")")
fi

{
    echo "== device check ($([ "$dry" = 1 ] && echo "dry run on the CPU" || echo GPU)), $(date -Is), $(hostname)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    echo "python: $python ($("$python" --version 2>&1)); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    start=$(date +%s)
    "$python" benchmarks/device_check.py --out "$json" "${args[@]}"
    rc=$?
    echo "== exit $rc after $(($(date +%s) - start)) s, $(date -Is); results: $json"
    exit $rc
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
