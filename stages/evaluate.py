"""Stage ``evaluate@<name>``: metrics of one trained variant on every set (validation, test, custom, sweep).

    python -m stages.evaluate --variant cnn --model models/cnn.keras --prepared data/prepared \
        --custom data/custom_sets --metrics metrics/cnn.json --out eval/cnn

Reads the model and its sidecar, ``val.npz``/``test.npz`` of the prepared data, every set of the
custom sets folder, the ``evaluate:`` params, ``variants.<name>.tta`` and ``seed`` (the corruption
subset and noise). Writes ``metrics/<name>.json`` (a DVC metrics file: flat scalars under the short
keys of ``cifar_dvc.evalsets.metric_key``) and ``eval/<name>/`` (per-class details, predictions,
confusion CSVs, the corruption table); the model file is only read, BatchNorm adaptation works on a
copy in memory. Logic: ``cifar_dvc.evaluation.evaluate``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cifar_dvc import config, evalsets
from cifar_dvc.datasets.params import read_seed
from cifar_dvc.errors import stage_main
from cifar_dvc.evaluation import evaluate
from cifar_dvc.evaluation.params import EvaluateParams
from cifar_dvc.tfenv import import_tensorflow
from cifar_dvc.training.variant import load_variant


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", required=True, help="variant name (a key of params.yaml variants:)")
    parser.add_argument("--model", type=Path, required=True, help="models/<name>.keras (sidecar beside it)")
    parser.add_argument("--prepared", type=Path, required=True, help="prepare's output (val.npz, test.npz)")
    parser.add_argument("--custom", type=Path, required=True, help="custom stage's output folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--out", type=Path, required=True, help="output folder of details and predictions")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="default params.yaml")
    args = parser.parse_args(argv)
    import_tensorflow()  # before the model registry imports it: no CPU-only start-up noise

    raw = config.read_params(args.params)
    params = config.load_section(EvaluateParams, "evaluate", params=raw, path=args.params)
    tta = load_variant(args.variant, raw, str(args.params)).tta
    seed = read_seed(raw, str(args.params))
    start = time.perf_counter()
    scores = evaluate.run(args.variant, args.model, args.prepared, args.custom, params, tta,
                          args.metrics, args.out, seed=seed)
    # the accuracies under the keys of the metrics file, as `dvc metrics show` will name them
    shown = ", ".join(f"{key} {_pct(scores[key])}" for key in evalsets.accuracy_keys() if key in scores)
    print(f"evaluate@{args.variant}: accuracy {shown}; tta={tta}; {time.perf_counter() - start:.1f} s "
          f"-> {args.metrics}, {args.out}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    stage_main(main)
