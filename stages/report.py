"""Stage ``report``: seed 004's Table 2 across the variants, the DVC plot data and every figure.

    python -m stages.report --eval eval --dvclive dvclive --models models --prepared data/prepared \
        --custom data/custom_sets --out plots/report

Reads ``eval/<variant>/`` of the report's variants (``report.variants``, null = every evaluated
one), their ``dvclive/<variant>/`` logs, the focus variant's model, the prepared test set, the
custom sets and the ``report:`` params. Writes ``plots/report/`` as a whole (summary.json, table.md,
curves.csv, blur.csv, corruptions.csv, figures/*.png: the registries ``DATA_FILES`` and ``FIGURES``
of ``cifar_dvc.evaluation.report``, where the logic is).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cifar_dvc import config
from cifar_dvc.errors import stage_main
from cifar_dvc.evaluation import report
from cifar_dvc.evaluation.params import ReportParams
from cifar_dvc.tfenv import import_tensorflow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval", type=Path, required=True, help="folder of the evaluate@<name> outputs")
    parser.add_argument("--dvclive", type=Path, required=True, help="folder of the dvclive training logs")
    parser.add_argument("--models", type=Path, required=True, help="folder of <name>.keras and <name>.json")
    parser.add_argument("--prepared", type=Path, required=True, help="prepare's output (test.npz)")
    parser.add_argument("--custom", type=Path, required=True, help="custom stage's output folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (summary, table, plot data, figures)")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="default params.yaml")
    args = parser.parse_args(argv)
    import_tensorflow()  # before the figures import it: no CPU-only start-up noise

    params = config.load_section(ReportParams, "report", path=args.params)
    paths = report.Paths(eval_dir=args.eval, dvclive_dir=args.dvclive, models_dir=args.models,
                         prepared=args.prepared, custom=args.custom, out=args.out)
    start = time.perf_counter()
    done = report.build(paths, params)
    figures = len(list((args.out / "figures").glob("*.png")))
    variants = ", ".join(done["variants"])
    print(f"report: {len(done['variants'])} variant(s) ({variants}), focus {done['focus']}, "
          f"{figures} figures; {time.perf_counter() - start:.1f} s -> {args.out}")


if __name__ == "__main__":
    stage_main(main)
