#!/usr/bin/env bash
# On the CPU machine: put one run's SFT data where the GPU calls can carry it.
#   training/gpu/stage.sh NAME SFT_JSONL [SFT_JSONL ...]
# writes .carry/train/NAME.sft.jsonl.gz (the files concatenated, gzipped: `mathcoder train` reads
# .gz) and checks it with a dry run of the trainer (counts, longest example, dropped ones).
# Run ../shared/tools/device-prep first (model parts, wheels, GSM8K under .carry/).
set -euo pipefail
name=${1:?usage: training/gpu/stage.sh NAME SFT_JSONL [SFT_JSONL ...]}; shift
[ $# -ge 1 ] || { echo "give at least one sft.jsonl" >&2; exit 2; }
root=$(git rev-parse --show-toplevel); cd "$root"
mkdir -p .carry/train
out=.carry/train/$name.sft.jsonl.gz
cat "$@" | gzip -9 > "$out"
py=${PYTHON:-.venv/bin/python}
# Same max_len as experiment.sh: examples over it are dropped there, and warned about here.
"$py" -m training.train_cli --data "$out" --out "/tmp/stage-$name" --max-len "${MAX_LEN:-1024}" --dry-run | tail -n 3
du -h "$out"
echo "call 2 carries $(du -cm .carry/m2 .carry/train | tail -n 1 | cut -f1) MiB (.carry/m2 + .carry/train; limit 64)"
