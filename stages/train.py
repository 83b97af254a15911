"""Stage ``train@<variant>``: train one model variant and save its best model.

    python -m stages.train --variant cnn --data data/prepared \
        --model models/cnn.keras --live dvclive/cnn [--backup backups/cnn] [--params params.yaml]

Reads ``seed``, ``train.*`` and ``variants.<variant>`` from the params file and the prepared
data directory; writes ``models/<variant>.keras``, ``models/<variant>.json`` (sidecar) and the
dvclive directory, each atomically. With ``--backup``, every finished epoch is kept in that
folder and a re-run after an interruption resumes from it (removed when the stage finishes).
Bad params => one ``error:`` line and exit status 2, before anything is written (names and
types before any data is read; ``model_args`` values the model rejects after reading
``meta.json``). Logic: ``cifar_dvc.training.loop``.
"""

from __future__ import annotations

import argparse

from cifar_dvc.errors import stage_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="name under variants: in the params file")
    parser.add_argument("--data", required=True, help="prepared data directory")
    parser.add_argument("--model", required=True, help="output .keras file")
    parser.add_argument("--live", required=True, help="output dvclive directory")
    parser.add_argument("--backup", default=None,
                        help="folder for the last finished epoch, resumed by a re-run (default: none)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    args = parser.parse_args(argv)
    from cifar_dvc import atomic, modelinfo

    # Debris of a killed earlier run; never the backup, which is there to be resumed.
    atomic.clean_stale(args.model, modelinfo.info_path(args.model), args.live)
    from cifar_dvc.tfenv import import_tensorflow

    import_tensorflow()  # before anything imports it (the model registry does): no start-up noise
    from cifar_dvc.training.variant import load_params

    seed, train, variant = load_params(args.variant, args.params)  # fails before any data is read
    from cifar_dvc.training.loop import check_model_args, train_variant

    check_model_args(args.variant, variant, args.data, args.params)  # fails before anything is written
    result = train_variant(args.variant, variant, train, seed, args.data, args.model, args.live,
                           backup_dir=args.backup)
    s = result.summary
    print(f"train@{args.variant}: {s['epochs_run']} epochs ({s['precision']}) in {s['seconds']:.0f} s "
          f"({s['images_per_second']:.0f} images/s), best epoch {s['best_epoch']} "
          f"{s['monitor']}={s['best_value']}, saved {args.model}")


if __name__ == "__main__":
    stage_main(main)
