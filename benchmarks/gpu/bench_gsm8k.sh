#!/usr/bin/env bash
# Third call of a device run (see README.md): the default model on the full GSM8K test through the
# benchmark harness, greedy, TIR preset; the run folder comes back as $OUT/gsm8k-base.tgz.
source benchmarks/gpu/setup.sh
export MATHCODER_SANDBOX_MAX_KERNELS=64 MATHCODER_SANDBOX_POOL_SIZE=16
# $OUT brings back at most 8 files: the run folder travels as one archive (also on a time-out).
trap 'tar czf "$OUT/gsm8k-base.tgz" -C /tmp gsm8k-base' EXIT
python3 -m runtime.cli bench --dataset gsm8k --split test --concurrency 64 --max-tokens 512 \
  --no-progress --out /tmp/gsm8k-base > "$OUT/bench.log" 2>&1
