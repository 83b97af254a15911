"""Stage ``prepare``: subset, validation split, one-hot labels and normalization statistics.

``cifar_dvc.datasets.split`` does the work: a stratified seeded ``data.train_subset``, a stratified
seeded validation split (``prepare.validation``: a fraction, or ``test``), float32 one-hot labels,
and the statistics of ``prepare.normalize`` from the final training split, saved as
``normalization.json`` for every later consumer. Images stay uint8.

Params: seed, data.train_subset, prepare.normalize, prepare.validation.
Reads: ``--interim`` (data/interim). Writes: ``--out`` (data/prepared: train/val/test.npz, meta.json,
normalization.json). Run: ``dvc repro prepare``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar_dvc.atomic import atomic_dir, clean_stale
from cifar_dvc.config import load_section, read_params
from cifar_dvc.datasets.params import DataParams, PrepareParams, read_seed
from cifar_dvc.datasets.split import prepare_dir
from cifar_dvc.errors import stage_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interim", type=Path, required=True, help="input directory (data/interim)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (data/prepared)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    clean_stale(args.out)  # what a killed run left
    params = read_params(args.params)
    prep = load_section(PrepareParams, "prepare", params, path=args.params)
    # Of the data section only train_subset is used (dvc.yaml lists just that key).
    data = load_section(DataParams, "data", params, path=args.params)
    seed = read_seed(params, str(args.params))
    with atomic_dir(args.out) as tmp:
        prepared = prepare_dir(args.interim, tmp, prep, data.train_subset, seed)
    print(f"prepare: {len(prepared.train)} train / {len(prepared.val)} val / {len(prepared.test)} test, "
          f"normalize={prepared.stats.method} -> {args.out}")


if __name__ == "__main__":
    stage_main(main)
