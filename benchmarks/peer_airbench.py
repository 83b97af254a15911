"""Run the real airbench (PyTorch, ``airbench==0.1.8``) on this CPU and this project's data: `fast`'s peer.

The package's ``train94``, ``train95`` and ``train96`` run unchanged in their recipes (batch 1024,
epochs, lr, lookahead, alternating flip, whitening, TTA); the adapter changes only what a
CPU-only PyTorch cannot do, by monkeypatching, never by copying airbench's code:

- ``net.half().cuda()`` (``make_net9x``) and ``images.half()`` (``CifarLoader``): identity / float32
  (no CUDA here, and float16 convolutions on a CPU are emulated and slow);
- ``torch.cuda.Event`` / ``torch.cuda.synchronize`` (airbench's timer): a ``time.perf_counter``
  clock; their sum is reported as "timed by airbench";
- ``CifarLoader(..., gpu=0)``, whose ``torch.load(map_location=torch.device(gpu))`` fails without
  CUDA: the default device becomes ``"cpu"`` (the loaders ``train`` makes itself use the default);
- ``torchvision``: airbench imports it for ``transforms.Normalize`` and (only when its ``.pt``
  cache is missing) ``datasets.CIFAR10``; PyPI's torchvision for torch 2.13 does not import
  against the CPU-only torch, so a stand-in module gives the one name used (the cache is
  always written here, so CIFAR10 is never reached and the stand-in has none).

Data: the ``data/prepared`` splits that ``fast`` trains on (``--data``; uint8 NHWC ``x`` and int64
``y`` in ``train.npz``, ``val.npz``, ``test.npz``, see ``cifar_dvc/artifacts.py``). ``--split
trainval`` (default) trains on train + val, the 50,000 images airbench trains on;
``--split train`` on train only (45,000 with the stage's 5,000 held out). Always tested on
``test.npz`` (10,000). They are written as airbench's own cache (``cifar10/train.pt`` and
``test.pt`` in a temporary working directory), so the package's loaders read them unchanged.

Records per run: test accuracy without and with the recipe's TTA (airbench's ``evaluate``),
epochs, wall and CPU minutes (this process, all threads), airbench's own timed seconds, torch
threads, CPU model and flags, load average, torch's seed. Results are appended to ``--out``
(JSON) and the Markdown table beside it (``.md``) is rewritten from all runs; both atomically.

Run with the peer venv (``make peer-venv``), never the project's:

    # proves the adapter works: a few hundred images, a fraction of an epoch, ~1 minute
    nice -n 10 .venv-peer/bin/python benchmarks/peer_airbench.py --smoke
    # airbench94 twice on the 50,000 (40+ minutes of both cores each)
    nice -n 10 .venv-peer/bin/python benchmarks/peer_airbench.py --recipe 94 --runs 2

Reads ``--data``. Writes ``--out`` and its ``.md`` (default ``benchmarks/results/peer_airbench.json``;
``--smoke``: ``/tmp/peer_airbench_smoke.json``) and a temporary directory. Standalone: it imports
nothing of the project but its sibling ``runinfo`` (standard library only), as the peer venv has
neither TensorFlow nor the project installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import runinfo  # benchmarks/runinfo.py: standard library only
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("94", "95", "96")
# --smoke: enough steps for one lookahead update (every 5) and the final copy, in under an epoch
SMOKE = {"train_images": 512, "test_images": 256, "batch_size": 64, "epochs": 0.75}


class _Clock:
    """Stands in for ``torch.cuda.Event(enable_timing=True)``: wall clock, ms between records."""

    timed_seconds = 0.0  # sum of every elapsed_time: airbench's own total_time_seconds

    def __init__(self, enable_timing: bool = True) -> None:
        self.t: float | None = None

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _Clock) -> float:
        seconds = end.t - self.t
        _Clock.timed_seconds += seconds
        return 1e3 * seconds


def install_cpu_shims() -> None:
    """Make airbench run on a CPU-only torch in float32 (see the module docstring); before import."""
    normalize_only = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")

    class Normalize(nn.Module):  # what airbench uses of torchvision: T.Normalize(mean, std)(images)
        def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
            super().__init__()
            self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW
            return (x - self.mean.view(-1, 1, 1).to(x)) / self.std.view(-1, 1, 1).to(x)

    transforms.Normalize = Normalize
    normalize_only.transforms = transforms
    sys.modules.setdefault("torchvision", normalize_only)
    sys.modules.setdefault("torchvision.transforms", transforms)

    nn.Module.half = lambda self: self  # make_net: net.half().cuda(); BatchNorm's .float() stays
    nn.Module.cuda = lambda self, device=None: self
    torch.Tensor.half = lambda self, memory_format=torch.preserve_format: self.float()
    torch.cuda.Event = _Clock
    torch.cuda.synchronize = lambda device=None: None
    from airbench import utils  # after the torchvision stand-in

    init = utils.CifarLoader.__init__
    if init.__code__.co_varnames[init.__code__.co_argcount - 1] != "gpu":
        raise SystemExit("error: airbench's CifarLoader no longer ends with `gpu`: check the shims")
    init.__defaults__ = (*init.__defaults__[:-1], "cpu")  # torch.load(map_location=torch.device("cpu"))


def write_cache(data: Path, split: str, workdir: Path, smoke: bool) -> dict[str, int]:
    """airbench's ``cifar10/{train,test}.pt`` in ``workdir`` from the prepared .npz splits."""
    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(data / f"{name}.npz", allow_pickle=False) as f:
            return f["x"], f["y"]

    parts = [read("train")] + ([read("val")] if split == "trainval" else [])
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read("test")
    if smoke:
        x_train, y_train = x_train[:SMOKE["train_images"]], y_train[:SMOKE["train_images"]]
        x_test, y_test = x_test[:SMOKE["test_images"]], y_test[:SMOKE["test_images"]]
    if x_train.dtype != np.uint8 or x_train.shape[1:] != (32, 32, 3):
        raise SystemExit(f"error: {data}: airbench needs uint8 32x32x3 images, got {x_train.dtype} "
                         f"{x_train.shape[1:]}")
    meta = json.loads((data / "meta.json").read_text())
    (workdir / "cifar10").mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        torch.save({"images": torch.from_numpy(np.ascontiguousarray(x)),
                    "labels": torch.from_numpy(y.astype(np.int64)), "classes": list(meta["classes"])},
                   workdir / "cifar10" / f"{name}.pt")
    return {"train_images": len(x_train), "test_images": len(x_test)}


def cpu_info() -> dict[str, Any]:
    """CPU model, the speed-relevant flags it has, cores, torch threads."""
    model, flags = runinfo.cpu()
    return {"cpu": model, "flags": flags, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__}


def run_once(recipe: str, smoke: bool) -> dict[str, Any]:
    """One training of ``train<recipe>`` in the current directory (which holds ``cifar10/``)."""
    import airbench  # after the shims
    from airbench import utils

    module = getattr(airbench, f"lib_airbench{recipe}")
    hyp = module.hyp
    train = getattr(airbench, f"train{recipe}")
    kwargs: dict[str, Any] = {"verbose": False}
    epochs = hyp["opt"]["train_epochs"]
    if smoke:  # the package's own loader and recipe, on a smaller batch and budget
        epochs = SMOKE["epochs"]
        kwargs["epochs"] = epochs
        kwargs["train_loader"] = utils.CifarLoader("cifar10", train=True, batch_size=SMOKE["batch_size"],
                                                   aug=hyp["aug"], altflip=True)
    _Clock.timed_seconds = 0.0
    load_start = runinfo.load()
    wall, cpu = time.perf_counter(), time.process_time()
    model = train(**kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    test_loader = utils.CifarLoader("cifar10", train=False, batch_size=2000)
    tta = hyp["net"]["tta_level"]
    eval_start = time.perf_counter()
    plain = utils.evaluate(model, test_loader, tta_level=0)
    with_tta = utils.evaluate(model, test_loader, tta_level=tta)
    return {"recipe": f"airbench{recipe}", "smoke": smoke, "epochs": epochs,
            "batch_size": kwargs["train_loader"].batch_size if smoke else hyp["opt"]["batch_size"],
            "test_accuracy": round(plain, 4), "test_accuracy_tta": round(with_tta, 4), "tta_level": tta,
            "wall_minutes": round(wall / 60, 3), "cpu_minutes": round(cpu / 60, 3),
            "airbench_timed_minutes": round(_Clock.timed_seconds / 60, 3),
            "eval_minutes": round((time.perf_counter() - eval_start) / 60, 3),
            "torch_seed": torch.initial_seed(), "load_start": load_start, "load_end": runinfo.load(),
            "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}


def markdown(record: dict[str, Any]) -> str:
    lines = ["# airbench (PyTorch, `airbench==0.1.8`) on this project's data and CPU", "",
             "Written by `benchmarks/peer_airbench.py` (CPU shims only; see its docstring). "
             "Accuracy on the 10,000 test images, plain and with the recipe's TTA; wall and CPU "
             "minutes of the training call (CPU = all threads of the process).", "",
             "| date | recipe | images (train/test) | epochs | batch | test | test with TTA | wall min "
             "| CPU min | timed by airbench (min) | threads | CPU (flags) | load 1/5/15 start -> end "
             "| command |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in record["runs"]:
        m = r["machine"]
        lines.append(
            f"| {r['date']} | {r['recipe']}{' (smoke)' if r['smoke'] else ''} | "
            f"{r['train_images']:,} ({r['split']}) / {r['test_images']:,} | {r['epochs']} | "
            f"{r['batch_size']} | "
            f"{r['test_accuracy']:.2%} | {r['test_accuracy_tta']:.2%} | {r['wall_minutes']:.2f} | "
            f"{r['cpu_minutes']:.2f} | {r['airbench_timed_minutes']:.2f} | {m['threads']} | "
            f"{m['cpu']} ({', '.join(m['flags']) or 'none'}) | {r['load_start']} -> {r['load_end']} | "
            f"`{r['command']}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=RECIPES, default="94", help="airbench recipe (train94/95/96)")
    parser.add_argument("--runs", type=int, default=1, help="trainings in a row (airbench's seed varies)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--split", choices=("trainval", "train"), default="trainval",
                        help="trainval = train.npz + val.npz (50,000 for CIFAR-10), train = train.npz only")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE['train_images']} train / {SMOKE['test_images']} test images, "
                             f"batch {SMOKE['batch_size']}, {SMOKE['epochs']} epoch: proves the adapter")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads; default: torch's own")
    parser.add_argument("--out", type=Path, help="JSON of all runs (appended); the .md beside it")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    # resolved now: the runs happen in a temporary working directory (below), where a relative
    # --out would be written and then deleted with it
    out = (args.out or (Path("/tmp/peer_airbench_smoke.json") if args.smoke
                        else ROOT / "benchmarks" / "results" / "peer_airbench.json")).resolve()
    if args.threads:
        torch.set_num_threads(args.threads)
    install_cpu_shims()
    command = runinfo.command(argv)
    data = args.data.resolve()
    record = json.loads(out.read_text()) if out.exists() else {"runs": []}
    with tempfile.TemporaryDirectory(prefix="peer-airbench-") as tmp:
        sizes = write_cache(data, args.split, Path(tmp), args.smoke)
        here = Path.cwd()
        os.chdir(tmp)  # airbench reads 'cifar10/{train,test}.pt' relative to the working directory
        try:
            for i in range(args.runs):
                result = {**run_once(args.recipe, args.smoke), **sizes, "split": args.split,
                          "data": str(data), "run": i + 1, "machine": cpu_info(), "command": command}
                print(json.dumps(result), flush=True)
                record["runs"].append(result)
                # written as it goes: a kill keeps the runs done
                runinfo.write_atomic(out, json.dumps(record, indent=2) + "\n")
                runinfo.write_atomic(out.with_suffix(".md"), markdown(record))
        finally:
            os.chdir(here)
    print(f"# wrote {out} and {out.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
