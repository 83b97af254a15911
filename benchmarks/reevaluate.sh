#!/usr/bin/env bash
# Re-evaluate variants trained in a reproduction workspace with the evaluation code of this checkout,
# without retraining them: a copy of this project (cifar_dvc.demo.copy_project) gets the workspace's
# data/prepared, photos, models and dvclive logs, then runs the custom, evaluate and report stages
# directly (no dvc: the copied models are not outputs of this copy's train stages).
# Run by hand; results in <out>/plots/report/table.md and <out>/metrics/.
#
#   SRC=/work/repro OUT=/work/repro-eval benchmarks/reevaluate.sh cnn small_cnn vgg_bn mlp mnet1
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: SRC=<workspace> OUT=<new folder> $0 <variant>..." >&2; exit 2; }
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
SRC=${SRC:-/work/repro}
W=${OUT:-/work/repro-eval}
rm -rf "$W"
python -c "
from pathlib import Path
from cifar_dvc.demo import copy_project
copy_project(Path('$W'), {'train': {'verbose': 'epoch'}})"
cd "$W"
cp -r "$SRC/data/prepared" data/
cp -r "$SRC"/data/custom/* data/custom/
mkdir -p models dvclive
for v in "$@"; do
  cp "$SRC/models/$v.keras" "$SRC/models/$v.json" models/
  cp -r "$SRC/dvclive/$v" dvclive/
done
nice -n 5 python -m stages.custom --photos data/custom --prepared data/prepared --out data/custom_sets --sheet plots/custom/contact_sheet.png
for v in "$@"; do
  echo "$(date -u +%T) evaluate $v"
  nice -n 5 python -m stages.evaluate --variant "$v" --model "models/$v.keras" --prepared data/prepared --custom data/custom_sets --metrics "metrics/$v.json" --out "eval/$v"
done
nice -n 5 python -m stages.report --eval eval --dvclive dvclive --models models --prepared data/prepared --custom data/custom_sets --out plots/report
echo "$(date -u +%T) done"
