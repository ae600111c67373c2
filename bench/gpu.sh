#!/usr/bin/env bash
# Every GPU benchmark in sequence, in about eight minutes on one H200 (each has a time
# limit; together at most twelve minutes), so a short loan of a GPU measures them all.
#
# Run: bash bench/gpu.sh
#   PYTHON=/path/to/python  the interpreter (default: .venv/bin/python, else python3); it
#                           needs a CUDA build of torch and the dev extra (transformers)
#   OUT=/some/folder        where the outputs go (default: bench-gpu-<date>/ here)
#
# Writes one <name>.txt per benchmark (what it printed), env.txt (device, driver,
# versions) and summary.txt (the exit status and seconds of each). A benchmark that
# fails or runs out of time is recorded and the next one runs; the exit status is the
# number of benchmarks that did not finish cleanly.
#
# What runs, in order:
#   throughput-124m      traind vs a bare loop, gpt2-124m preset, bf16, eager
#   vs-hf-small          traind vs transformers.Trainer, an 11M Llama, bf16
#   throughput-1b        traind vs a bare loop, a 1.1B Hugging Face Llama, bf16
#   throughput-124m-compiled   as the first, both sides under torch.compile
#   soak-100             100 small files through traind serve (train.device = auto, so
#                        the GPU): worker RSS and the device's peak allocated memory at
#                        file 10 against file 100
# (checkpoint.py and optimizer.py take no --device: they measure the CPU.)

set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: $py has no CUDA device (torch.cuda.is_available() is false)" >&2
    exit 2
fi
out=${OUT:-bench-gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv 2>&1 || true
    "$py" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
    git rev-parse HEAD 2>/dev/null || true
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

failed=0
: >"$out/summary.txt"

# bench NAME LIMIT_S ARGS...: run one benchmark under a time limit, keep what it prints.
bench() {
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS status
    echo "== $name: $py $* (limit ${limit}s)"
    timeout --signal=INT --kill-after=15 "$limit" "$py" "$@" 2>&1 | tee "$out/$name.txt"
    status=${PIPESTATUS[0]}
    echo "$name exit=$status seconds=$((SECONDS - started))" | tee -a "$out/summary.txt"
    if [[ $status -ne 0 ]]; then
        failed=$((failed + 1))
    fi
}

bench throughput-124m 100 bench/throughput.py --device cuda --presets gpt2-124m \
    --steps 30 --rounds 2
bench vs-hf-small 130 bench/vs_hf_trainer.py --device cuda --size small --steps 40 --rounds 2
bench throughput-1b 180 bench/throughput.py --device cuda --presets llama-1b \
    --steps 15 --rounds 1 --micro-batch 4 --grad-accum 2
bench throughput-124m-compiled 130 bench/throughput.py --device cuda --presets gpt2-124m \
    --steps 30 --rounds 1 --compile

bench soak-100 150 bench/soak.py --files 100 --preset tiny

echo "outputs in $out; $failed benchmark(s) did not finish cleanly"
exit "$failed"
