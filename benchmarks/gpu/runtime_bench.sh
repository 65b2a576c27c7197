#!/usr/bin/env bash
# Third call of a device run (see benchmarks/gpu/README.md): assemble the model, install the wheels,
# run the runtime benchmark on the GPU, and leave results and the log under $OUT.
set -euo pipefail
cat /tmp/m/part_0* .carry/m3/part_0* > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# The runtime looks for <cache>/models/<gguf> and <data dir>/gsm8k/test.jsonl.
export MATHCODER_CACHE_DIR=/tmp/cache MATHCODER_BENCH_DATA_DIR=/tmp/data
mkdir -p /tmp/cache/models /tmp/data/gsm8k
mv /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/cache/models/
cp .carry/data/*.jsonl /tmp/data/gsm8k/
# The device image has no bubblewrap and no network to fetch it: kernels run with rlimits only there.
command -v bwrap >/dev/null || export MATHCODER_SANDBOX_ISOLATION=none
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m benchmarks.runtime_bench --limit 64 --max-tokens 384 --raw-tokens 256 \
  --out "$OUT/runtime.json" 2>&1 | tee "$OUT/runtime.log"
