#!/usr/bin/env bash
# The README's GPU table in one run: the CUDA tests, then every GPU benchmark, most telling first.
#
#   bash benchmarks/gpu_table.sh [--out DIR] [--budget S] [NAME ...]   # default DIR: gpu-figures, NAME: all
#   bash benchmarks/gpu_table.sh --list                                  # the names and commands, nothing run
#
# Each command's output goes to DIR/NAME.log, and its JSON lines are also appended to DIR/figures.jsonl.
# A command that fails or outlives its time limit is reported and the next one runs anyway, so one
# broken path does not cost the other figures. The compiling commands, whose GPU time has not been
# measured yet, come last. --budget S: the whole run may take S seconds at most; a command whose
# time limit no longer fits in what is left is skipped (and listed), so a short GPU lease still gets
# the first figures of the table. PYTHON picks the interpreter (default python3); the package is
# taken from this checkout's lib/ (no install needed), the other packages from the interpreter's
# environment (with PYTHONPATH, e.g. wheels unpacked by pip install --target DIR).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

# name | seconds | command (run from the repository root)
TABLE="
cuda_tests          | 180 | $py -m pytest -q tests/test_cuda_graphs.py tests/test_reference_step.py
step                | 120 | $py benchmarks/train_step.py
step_graphs         | 120 | $py benchmarks/train_step.py --cuda-graphs
selection           |  60 | $py benchmarks/selection.py --device cuda
step_graphs_profile | 120 | $py benchmarks/train_step.py --cuda-graphs --profile
step_profile        | 120 | $py benchmarks/train_step.py --profile
step_bf16           | 120 | $py benchmarks/train_step.py --amp-dtype bf16
eval                | 120 | $py benchmarks/eval.py --device cuda
eval_no_fold        | 120 | $py benchmarks/eval.py --device cuda --no-fold
inference           |  60 | $py benchmarks/inference.py --device cuda
inference_no_fold   |  60 | $py benchmarks/inference.py --device cuda --no-fold
inference_flip      |  60 | $py benchmarks/inference.py --device cuda --flip
step_fp32           | 120 | $py benchmarks/train_step.py --no-amp
step_nchw           | 120 | $py benchmarks/train_step.py --no-channels-last
step_small          | 120 | $py benchmarks/train_step.py --batch 2 --mu 1
loader              | 120 | $py benchmarks/loader.py
step_regions        | 540 | $py benchmarks/train_step.py --compile-regions
step_regions_graphs | 540 | $py benchmarks/train_step.py --compile-regions --cuda-graphs
"

out=gpu-figures
budget=0
wanted=()
while (($#)); do
    case $1 in
        --out) out=$2; shift 2 ;;
        --budget)
            [[ ${2-} =~ ^[1-9][0-9]*$ ]] || { echo "gpu_table.sh: --budget takes whole seconds, not '${2-}'" >&2; exit 2; }
            budget=$2; shift 2 ;;
        --list) sed -n '/^[a-z0-9_]* *|/p' <<<"$TABLE"; exit 0 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) wanted+=("$1"); shift ;;
    esac
done
names=$(sed -n 's/^\([a-z0-9_]*\) *|.*/\1/p' <<<"$TABLE")
for name in "${wanted[@]}"; do
    grep -qx "$name" <<<"$names" || { echo "gpu_table.sh: unknown name '$name' (--list shows them)" >&2; exit 2; }
done
((${#wanted[@]})) || mapfile -t wanted <<<"$names"

mkdir -p "$out"
failed=0
skipped=()
for name in "${wanted[@]}"; do
    IFS='|' read -r _ limit command <<<"$(grep "^$name *|" <<<"$TABLE")"
    limit=${limit// /}
    if ((budget && SECONDS + limit + 10 > budget)); then     # + the 10 s between TERM and KILL
        echo "== $name: skipped (its limit, $limit s, does not fit in the $((budget - SECONDS)) s left of --budget)"
        skipped+=("$name")
        continue
    fi
    echo "== $name:$command (limit $limit s)"
    start=$SECONDS
    timeout -k 10 "$limit" $command >"$out/$name.log" 2>&1     # TERM at the limit, KILL 10 s later
    rc=$?
    grep '^{' "$out/$name.log" | tee -a "$out/figures.jsonl"
    tail -n 1 "$out/$name.log" | grep -v '^{'          # pytest's summary, or the error that ended it
    echo "   exit $rc after $((SECONDS - start)) s$( ((rc == 124 || rc == 137)) && echo ' (time limit)')"
    [ $rc = 0 ] || failed=$((failed + 1))
done
echo "$failed of $((${#wanted[@]} - ${#skipped[@]})) failed; logs in $out/"
((${#skipped[@]} == 0)) || echo "skipped for --budget $budget: ${skipped[*]}"
[ $failed = 0 ]
