#!/usr/bin/env bash
# One run of the issue-#7 experiment on the GPU machine: fine-tune the default model (SmolLM2-135M-
# Instruct, full fine-tune, bf16) on SFT data, then evaluate it with the benchmark harness on the full
# GSM8K test (1,319 problems, greedy, transformers backend, --model <the saved folder>).
#
#   bash training/gpu/experiment.sh NAME DATA_SFT_JSONL [DATA_SFT_JSONL ...]
#
# DATA is a path on the GPU machine, normally /tmp/train-data/NAME.sft.jsonl.gz (staged by stage.sh,
# copied there by env.sh); DATA "none" skips training and benchmarks the base model.
# Environment (defaults in brackets):
#   PHASE        all | train | bench  [all]: split train and bench over two consecutive calls when
#                one call's 10 minutes do not hold both (the model waits in /tmp/train-runs/NAME)
#   EPOCHS [3] LR [1e-4] BATCH [16] (rows of MAX_LEN tokens per step) MAX_LEN [1024] WARMUP [0.03]
#   PACKING [1]  EXTRA_TRAIN_ARGS  (more `train` options, e.g. "--torch-compile")
#   PRESET [tir-sft: the SFT data's system prompt, no few-shot; the base model: tir]
#   CONCURRENCY [64] MAX_TOKENS [512] LIMIT [all problems]
# Into $OUT (at most 8 files come back): train_results.json, train.log, bench_summary.json (the
# harness's one-line summary), bench.log, bench-NAME.tgz (the run folder: records, report, plots)
# and result.json (the record for docs/results.json: name, data, model, steps, GSM8K accuracy,
# training tokens/s, ...).  Everything written so far comes back on a time-out too.
set -euo pipefail
name=${1:?usage: experiment.sh NAME DATA_SFT_JSONL [DATA_SFT_JSONL ...]}; shift
[ $# -ge 1 ] || { echo "usage: experiment.sh NAME DATA_SFT_JSONL [...] (or DATA none)" >&2; exit 2; }
data=("$@")
source training/gpu/env.sh
phase=${PHASE:-all}
runs=/tmp/train-runs; mkdir -p "$runs" /tmp/bench
run_dir=$runs/$name
base=0; [ "${data[0]}" = none ] && base=1

if [ "$base" = 0 ] && [ "$phase" != bench ]; then
  args=(--name "$name" --out "$run_dir" --epochs "${EPOCHS:-3}" --lr "${LR:-1e-4}"
        --batch-size "${BATCH:-16}" --max-len "${MAX_LEN:-1024}" --warmup-ratio "${WARMUP:-0.03}"
        --eval-fraction 0.02 --logging-steps 20 --save-steps 1000000)  # no checkpoints: nothing outlives the machine
  for d in "${data[@]}"; do args+=(--data "$d"); done
  [ "${PACKING:-1}" = 1 ] || args+=(--no-packing)
  # shellcheck disable=SC2206  # word splitting of EXTRA_TRAIN_ARGS is intended
  args+=(${EXTRA_TRAIN_ARGS:-})
  nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/train.log"
  python3 -m training.train_cli "${args[@]}" >> "$OUT/train.log" 2>&1
  cp "$run_dir/train_results.json" "$OUT/train_results.json"
fi
[ "$phase" = train ] && exit 0

if [ "$base" = 1 ]; then model_args=(); preset=${PRESET:-tir}; else model_args=(--model "$run_dir/model"); preset=${PRESET:-tir-sft}; fi
[ -f "$run_dir/train_results.json" ] && cp "$run_dir/train_results.json" "$OUT/train_results.json"
bench_dir=/tmp/bench/$name
export MATHCODER_SANDBOX_MAX_KERNELS=64 MATHCODER_SANDBOX_POOL_SIZE=16
trap 'tar czf "$OUT/bench-$name.tgz" -C /tmp/bench "$name" 2>/dev/null || true' EXIT
limit_args=(); [ -n "${LIMIT:-}" ] && limit_args=(--limit "$LIMIT")
python3 -m runtime.cli bench --dataset gsm8k --split test --backend transformers "${model_args[@]}" \
  --preset "$preset" --concurrency "${CONCURRENCY:-64}" --max-tokens "${MAX_TOKENS:-512}" "${limit_args[@]}" \
  --no-progress --out "$bench_dir" > "$bench_dir.stdout" 2> "$OUT/bench.log"
tail -n 1 "$bench_dir.stdout" > "$OUT/bench_summary.json"
python3 - "$name" "$OUT" "$preset" "${data[@]}" <<'PY'
import json, sys
from pathlib import Path
name, out, preset, data = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
bench = json.loads((out / "bench_summary.json").read_text())
train_path = out / "train_results.json"
train = json.loads(train_path.read_text()) if train_path.is_file() else {}
record = {
    "name": name,
    "data": train.get("data", data),
    "model": train.get("model", "SmolLM2-135M-Instruct (default)"),
    "steps": train.get("steps", 0),
    "gsm8k_accuracy": bench["accuracy"],
    "gsm8k_correct": bench["correct"],
    "gsm8k_problems": bench["problems"],
    "tool_calls": bench["tool_calls"],
    "errors": bench["errors"],
    "preset": preset,
    "tokens_per_s": train.get("tokens_per_s"),
    "real_token_share": train.get("real_token_share"),
    "final_train_loss": train.get("final_train_loss"),
    "final_eval_loss": train.get("final_eval_loss"),
    "train_time_s": train.get("train_time_s"),
    "bench_wall_time_s": bench["wall_time_s"],
    "environment": train.get("environment"),
}
(out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record))
PY
