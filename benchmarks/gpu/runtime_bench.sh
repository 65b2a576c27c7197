#!/usr/bin/env bash
# Third call of a device run (see README.md): the runtime benchmark on the GPU; JSON and log in $OUT.
source benchmarks/gpu/setup.sh
python3 -m benchmarks.runtime_bench --limit 64 --max-tokens 384 --raw-tokens 256 \
  --out "$OUT/runtime.json" > "$OUT/runtime.log" 2>&1
