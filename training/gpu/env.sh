# Sourced by the scripts here on the GPU machine.  The first call of a session that runs it (the one
# that carries .carry/m3, .carry/whl and .carry/data) assembles the default model, installs the
# wheels and lays out GSM8K through benchmarks/gpu/setup.sh; a later call on the same warm machine
# finds all that under /tmp and only sets the environment again (the machine keeps /tmp between
# consecutive calls, not the environment).
set -euo pipefail
if [ -f /tmp/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ -d /tmp/site ]; then
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  export MATHCODER_CACHE_DIR=/tmp/cache MATHCODER_BENCH_DATA_DIR=/tmp/data
  command -v bwrap >/dev/null || export MATHCODER_SANDBOX_ISOLATION=none
else
  source benchmarks/gpu/setup.sh
fi
# Training data staged by training/gpu/stage.sh, sent with the second model part (see README.md).
if [ -d .carry/train ]; then mkdir -p /tmp/train-data && cp -n .carry/train/* /tmp/train-data/; fi
