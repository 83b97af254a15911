"""Stage ``fetch``: put the raw files of ``data.dataset`` into ``data/raw``, md5-checked.

CIFAR-10/100 and MNIST are copied from ``data.url`` when it is a local path, reused from a
download cache when a copy with the right md5 exists, or downloaded (``cifar_dvc.datasets.download``).
The synthetic set is generated from ``seed`` and ``data.synthetic`` in the official CIFAR-10
archive layout (``cifar_dvc.datasets.synthetic``). The output directory appears only on success.

Params: seed, data.dataset, data.url, data.md5, data.synthetic.
Writes: ``--out`` (data/raw). Run: ``dvc repro fetch`` (``python -m stages.fetch --out data/raw``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar_dvc.atomic import atomic_dir, clean_stale
from cifar_dvc.config import load_section, read_params
from cifar_dvc.datasets import download, sources, synthetic
from cifar_dvc.datasets.params import DataParams, read_seed
from cifar_dvc.errors import stage_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (data/raw)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    clean_stale(args.out)  # what a killed run left
    params = read_params(args.params)
    data = load_section(DataParams, "data", params, path=args.params)
    if data.dataset == "synthetic":
        seed = read_seed(params, str(args.params))
        train, test, classes = synthetic.generate(data.synthetic, seed)
        with atomic_dir(args.out) as tmp:
            synthetic.write_archive(tmp / sources.SYNTHETIC_ARCHIVE, train, test, classes)
        print(f"fetch: generated {len(train[1])} + {len(test[1])} synthetic images into {args.out}")
        return
    files = sources.resolve(data)
    with atomic_dir(args.out) as tmp:
        download.fetch_all(files, tmp)
    print(f"fetch: {', '.join(f.name for f in files)} in {args.out} (md5 verified)")


if __name__ == "__main__":
    stage_main(main)
