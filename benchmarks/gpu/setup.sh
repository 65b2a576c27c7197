# Sourced by the scripts here, in the third call of a device run (see README.md): assemble the
# default model from its three parts, install the wheels the image lacks, lay out the cache and
# GSM8K where the runtime looks (<cache>/models/<gguf>, <data dir>/gsm8k/test.jsonl).
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
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt"
