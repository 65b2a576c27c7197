#!/usr/bin/env bash
# Run 5's sampling step on the GPU machine (MARIO-style self-training / rejection sampling): the
# model that run 4 left in /tmp/train-runs/FROM/model solves GSM8K *train* problems, K samples each;
# correct, distinct traces are kept as new SFT data in /tmp/gen/FROM-self-train/sft.jsonl.
#
#   bash training/gpu/self_train.sh FROM [LIMIT]       (LIMIT: the first N train problems [2000])
#
# Resumable: the generation run folder records each finished problem, so a call cut off at its
# 10-minute limit is continued by running the same command in the next call.  The SFT view uses the
# tir-sft preset, the prompt the fine-tuned model was trained and is evaluated with.
# Environment: SAMPLES [4] TEMPERATURE [0.7] CONCURRENCY [64] MAX_TOKENS [512]
# Into $OUT: self_train.log, self-train-sft.jsonl.gz (the kept data, for the record) and card.json.
set -euo pipefail
from=${1:?usage: self_train.sh FROM [LIMIT]}; limit=${2:-2000}
source training/gpu/env.sh
model=/tmp/train-runs/$from/model
[ -f "$model/config.json" ] || { echo "no model at $model: run experiment.sh $from with PHASE=train first" >&2; exit 2; }
gen=/tmp/gen/$from-self-train
export MATHCODER_SANDBOX_MAX_KERNELS=64 MATHCODER_SANDBOX_POOL_SIZE=16
trap '[ -f "$gen/sft.jsonl" ] && gzip -c "$gen/sft.jsonl" > "$OUT/self-train-sft.jsonl.gz"; cp "$gen/card.json" "$OUT/" 2>/dev/null || true' EXIT
python3 -m runtime.cli generate self-train --backend transformers --model "$model" --preset tir-sft \
  --dataset gsm8k --split train --limit "$limit" --samples "${SAMPLES:-4}" --temperature "${TEMPERATURE:-0.7}" \
  --concurrency "${CONCURRENCY:-64}" --max-tokens "${MAX_TOKENS:-512}" --decontaminate gsm8k:test \
  --no-progress --out "$gen" > "$OUT/self_train.log" 2>&1
echo "kept: $(wc -l < "$gen/sft.jsonl") examples in $gen/sft.jsonl"
