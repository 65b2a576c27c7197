#!/usr/bin/env bash
# Third call of a device run (see benchmarks/gpu/README.md): the default model on the full GSM8K
# test through the benchmark harness, greedy, TIR preset; the run folder (records, report, plots)
# comes back under $OUT as gsm8k-base.tgz.
set -euo pipefail
cat /tmp/m/part_0* .carry/m3/part_0* > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export MATHCODER_CACHE_DIR=/tmp/cache MATHCODER_BENCH_DATA_DIR=/tmp/data
mkdir -p /tmp/cache/models /tmp/data/gsm8k
mv /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/cache/models/
cp .carry/data/*.jsonl /tmp/data/gsm8k/
# The device image has no bubblewrap and no network to fetch it: kernels run with rlimits only there.
command -v bwrap >/dev/null || export MATHCODER_SANDBOX_ISOLATION=none
export MATHCODER_SANDBOX_MAX_KERNELS=64 MATHCODER_SANDBOX_POOL_SIZE=16
# $OUT brings back at most 8 files: the run folder travels as one archive (also on a time-out).
trap 'tar czf "$OUT/gsm8k-base.tgz" -C /tmp gsm8k-base' EXIT
python3 -m runtime.cli bench --dataset gsm8k --split test --concurrency 64 --max-tokens 512 \
  --no-progress --out /tmp/gsm8k-base > "$OUT/bench.log" 2>&1
