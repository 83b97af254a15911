"""Stage ``custom``: the user's photos as unfiltered, filtered and blur-sweep test sets (seed 004),
resized with ``custom.resample`` and, side by side, with seed 004's ``custom.compare_resample``.

    python -m stages.custom --photos data/custom --prepared data/prepared \
        --out data/custom_sets --sheet plots/custom/contact_sheet.png

Reads the photo folder (``custom.dir``, passed by dvc.yaml as ``--photos``), ``meta.json`` of the
prepared data (classes, image size), and the ``custom:`` params. Writes the sets and
``report.json`` into ``--out`` and the contact sheet PNG to ``--sheet``, all or nothing (a failure,
e.g. a full disk, leaves neither); stale temporaries of killed runs are removed first.
Logic: ``cifar_dvc.custom_set``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cifar_dvc import artifacts, atomic
from cifar_dvc.config import PARAMS_FILE, load_section
from cifar_dvc.custom_set import (
    FILTERED,
    CustomParams,
    build_custom_sets,
    save_contact_sheet,
    write_custom_sets,
)
from cifar_dvc.errors import stage_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="photo folder, <class name>/<files>")
    parser.add_argument("--prepared", type=Path, required=True, help="prepare's output (its meta.json)")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the sets and report.json")
    parser.add_argument("--sheet", type=Path, required=True, help="contact sheet PNG to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default params.yaml)")
    args = parser.parse_args(argv)
    atomic.clean_stale(args.out, args.sheet)

    params = load_section(CustomParams, "custom", path=args.params)
    meta = artifacts.load_meta(args.prepared)
    start = time.perf_counter()
    sets = build_custom_sets(args.photos, meta, params)
    seconds = time.perf_counter() - start
    for warning in sets.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sheet_existed = args.sheet.exists()
    try:
        with atomic.atomic_dir(args.out) as tmp:
            write_custom_sets(tmp, sets)
            save_contact_sheet(args.sheet, sets, params)
    except BaseException:
        if not sheet_existed:  # the sheet without its sets would be a partial output
            args.sheet.unlink(missing_ok=True)
        raise
    n = len(sets.photos)
    kernels = sorted({p.kernel_size[FILTERED] for p in sets.photos})
    per_photo = f", {1000 * seconds / n:.0f} ms per photo" if n else ""
    print(f"custom: {n} photo(s), {len(sets.skipped)} skipped, {len(sets.images)} sets -> {args.out}; "
          f"filtered kernel sizes {kernels}; {seconds:.1f} s{per_photo}; sheet {args.sheet}")


if __name__ == "__main__":
    stage_main(main)
