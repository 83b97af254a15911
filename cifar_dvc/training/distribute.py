"""Where training runs: one device, several GPUs, or several machines (``tf.distribute``).

``select_strategy`` picks TensorFlow's own engine, nothing of ours:

- ``TF_CONFIG`` set with two or more tasks in its cluster: ``MultiWorkerMirroredStrategy``
  (synchronous data parallelism, one collective all-reduce of the gradients per step);
- else several visible GPUs: ``MirroredStrategy`` over them;
- else the default strategy (one device, nothing changes).

A variant's ``batch_size`` stays the *global* batch: tf.distribute splits each batch across the
replicas (the input is auto-sharded by data, ``cifar_dvc.training.data``), so the recipe and its
learning rate mean the same thing on 1 or N workers.

Only the chief (task ``chief``, or ``worker`` 0 when the cluster has no ``chief``) writes the real
outputs. Every other worker runs the very same code, saves included (keeps the workers in step),
but ``worker_outputs`` points its model, sidecar and dvclive paths into a private temporary folder
outside the project that it removes at the end, so DVC sees exactly what a single-machine run makes.

``TF_CONFIG`` is TensorFlow's JSON: ``{"cluster": {"worker": ["host0:port", "host1:port"]},
"task": {"type": "worker", "index": 0}}``. The ``cifar-dvc-worker`` command builds it from
``--workers`` and ``--index`` and then becomes ``python -m stages.train`` (run it from the
project directory; docs/cluster.md)::

    cifar-dvc-worker --workers 10.0.0.1:12345,10.0.0.2:12345 --index 0 -- \\
        --variant cnn --data data/prepared --model models/cnn.keras --live dvclive/cnn
    python -m cifar_dvc.training.distribute ...   # the same, without the console script

Reads the ``TF_CONFIG`` environment variable. Writes nothing itself; ``worker_outputs`` makes and
removes a non-chief's temporary folder. Used by ``cifar_dvc.training.loop``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cifar_dvc.errors import UserError, stage_main

TF_CONFIG = "TF_CONFIG"
BYTES_PER_PACK = 64 * 2**20  # gradients packed into all-reduces of up to this many bytes
WORKER_TMP_PREFIX = "cifar-dvc-worker-"  # a non-chief's throw-away output folder, in the system temp


def read_tf_config(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """``TF_CONFIG`` parsed and checked, or None when unset or empty."""
    raw = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{TF_CONFIG}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    cluster = conf.get("cluster") if isinstance(conf, dict) else None
    task = conf.get("task") if isinstance(conf, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError(f'{TF_CONFIG}: expected {{"cluster": {{...}}, '
                        '"task": {"type": ..., "index": ...}}')
    kind, index = task.get("type"), task.get("index", 0)
    if not isinstance(index, int) or kind not in cluster or not 0 <= index < len(cluster[kind]):
        raise UserError(f"{TF_CONFIG}: task {kind!r} index {index!r} is not in the cluster "
                        f"({ {k: len(v) for k, v in cluster.items()} })")
    return conf


def num_workers(conf: dict[str, Any] | None) -> int:
    """Training tasks (``chief`` + ``worker``) in ``TF_CONFIG``'s cluster; 1 without one."""
    if conf is None:
        return 1
    return sum(len(conf["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def is_chief(conf: dict[str, Any] | None = None) -> bool:
    """Whether this process writes the outputs (``conf``: ``read_tf_config()`` when omitted).

    TensorFlow's rule: the ``chief`` task, or ``worker`` 0 when the cluster names no chief.
    A single-machine run (no ``TF_CONFIG``) is its own chief.
    """
    conf = read_tf_config() if conf is None else conf
    if conf is None:
        return True
    kind, index = conf["task"]["type"], conf["task"].get("index", 0)
    if "chief" in conf["cluster"]:
        return kind == "chief"
    return kind == "worker" and index == 0


def select_strategy() -> Any:
    """``MultiWorkerMirroredStrategy`` under a multi-task ``TF_CONFIG``, ``MirroredStrategy`` over
    several GPUs, else the default strategy (a ``tf.distribute.Strategy`` in every case)."""
    import tensorflow as tf

    # TF_CONFIG first: listing the GPUs starts TensorFlow's runtime, and the collective ops of the
    # multi-worker strategy must be configured before that.
    if num_workers(read_tf_config()) > 1:
        return _multi_worker_strategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def steps_per_execution(requested: int) -> int:
    """``requested``, or 1 under a multi-worker ``TF_CONFIG``.

    Keras 3.15's multi-step loop (``steps_per_execution`` > 1) fails under the multi-worker
    strategy ("You must feed a value for placeholder tensor 'while/cond/Placeholder'"), seen with
    and without XLA; one step per call is what runs. A step there waits for an all-reduce over the
    network anyway, which dwarfs the Python overhead the setting saves.
    """
    return 1 if num_workers(read_tf_config()) > 1 else requested


def _multi_worker_strategy() -> Any:
    """TensorFlow's ``MultiWorkerMirroredStrategy`` with a ``reduce`` that Keras 3's ``fit`` can use.

    Across several workers Keras 3.15's ``fit`` fails twice in ``strategy.reduce`` (keras-team/keras
    issue 20585, open): it reduces a whole ``(images, labels)`` batch to learn the input shapes,
    a nest that TensorFlow's ``reduce`` refuses ("Attempt to convert a value (PerReplica...)");
    and it averages every logged metric with ``axis=0``, which a scalar does not have ("Invalid
    reduction dimension 0"). So: each value of a nest is reduced on its own, and a scalar across
    the replicas only (``axis=None``), which is what both calls mean.
    """
    import tensorflow as tf

    class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: Any) -> Any:
            reduce_one = super().reduce

            def one(v: Any) -> Any:
                local = self.experimental_local_results(v)[0]
                scalar = getattr(getattr(local, "shape", None), "rank", None) == 0
                return reduce_one(reduce_op, v, axis=None if scalar else axis)

            return tf.nest.map_structure(one, value)

    # All gradients in one all-reduce a step instead of one per variable: on CPUs over gRPC each
    # collective costs milliseconds, and a model has dozens of variables.
    options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=BYTES_PER_PACK)
    return KerasMultiWorkerStrategy(communication_options=options)


@contextlib.contextmanager
def worker_outputs(*paths: Path | str) -> Iterator[tuple[Path, ...]]:
    """Yield the paths this process should write ``paths`` to.

    The chief gets ``paths`` unchanged. Any other worker gets the same names inside a new private
    temporary folder (relative layout kept, outside the project), removed on exit whatever happens.
    """
    paths = tuple(Path(p) for p in paths)
    if is_chief():
        yield paths
        return
    tmp = Path(tempfile.mkdtemp(prefix=WORKER_TMP_PREFIX))
    try:
        # Absolute paths keep their tail only: the folder must not depend on the chief's layout.
        yield tuple(tmp / (p.relative_to(p.anchor) if p.is_absolute() else p) for p in paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tf_config_for(workers: list[str], index: int) -> dict[str, Any]:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``workers`` (``host:port`` each)."""
    if len(workers) < 1 or any(":" not in w for w in workers):
        raise UserError(f"--workers: expected comma-separated host:port entries, got {','.join(workers)!r}")
    if not 0 <= index < len(workers):
        raise UserError(f"--index: expected 0..{len(workers) - 1} for {len(workers)} workers, got {index}")
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}


def main(argv: list[str] | None = None) -> None:
    """``cifar-dvc-worker``: set ``TF_CONFIG`` from ``--workers``/``--index``, run the train stage."""
    parser = argparse.ArgumentParser(
        prog="cifar-dvc-worker",
        description="Run one worker of a multi-worker train@<variant> (worker 0 is the chief and writes "
                    "the outputs). Arguments after -- go to python -m stages.train.")
    parser.add_argument("--workers", required=True,
                        help="every worker's host:port, comma-separated, the same list on every machine")
    parser.add_argument("--index", type=int, required=True, help="this machine's position in --workers")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the train stage's arguments")
    args = parser.parse_args(argv)
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    os.environ[TF_CONFIG] = json.dumps(tf_config_for(workers, args.index))
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    # exec, not import: ``stages`` is found from the project directory (``python -m`` puts the
    # working directory on sys.path, a console script does not), and the stage's exit status,
    # signals and error line are exactly those of ``python -m stages.train``.
    os.execv(sys.executable, [sys.executable, "-m", "stages.train", *train_args])


def cli() -> None:
    """The ``cifar-dvc-worker`` console script: ``main`` with one-line errors (exit 2)."""
    stage_main(main)


if __name__ == "__main__":
    cli()
