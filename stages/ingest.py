"""Stage ``ingest``: the raw archive(s) -> validated uint8 NHWC arrays in ``data/interim``.

The pickles are read with a restricted unpickler and the tar members in memory, never extracted
(``cifar_dvc.datasets.cifar``, ``safe_pickle``, ``archive``); MNIST's IDX files by ``mnist``.
Every problem is one ``error:`` line naming the file, exit status 2, and no output.

Params: data.dataset, data.label_mode.
Reads: ``--raw`` (data/raw). Writes: ``--out`` (data/interim: train.npz, test.npz, meta.json).
Run: ``dvc repro ingest`` (``python -m stages.ingest --raw data/raw --out data/interim``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar_dvc.atomic import atomic_dir, clean_stale
from cifar_dvc.config import load_section
from cifar_dvc.datasets.ingest import ingest_raw, write_interim
from cifar_dvc.datasets.params import DataParams
from cifar_dvc.errors import stage_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True, help="input directory (data/raw)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (data/interim)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    clean_stale(args.out)  # what a killed run left
    data = load_section(DataParams, "data", path=args.params)
    train, test, meta = ingest_raw(args.raw, data)
    with atomic_dir(args.out) as tmp:
        write_interim(tmp, train, test, meta)
    print(f"ingest: {meta.dataset}: {len(train.y)} train + {len(test.y)} test images of shape "
          f"{meta.image_shape}, {meta.num_classes} classes -> {args.out}")


if __name__ == "__main__":
    stage_main(main)
