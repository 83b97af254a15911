"""Resume an interrupted ``train@<name>`` from its last finished epoch.

A session that ends, a kill or a power cut must not throw away hours of training. At the end of
every epoch ``EpochBackup`` writes into a per-variant backup folder (``backups/<name>/``, given by
``dvc.yaml``; not a DVC output, git-ignored):

- ``epoch-<k>.weights.h5``: the model's weights *and* the optimizer's variables (moments,
  iteration count, hence the learning-rate schedule's position, and a plateau-reduced rate);
- ``state.json``, written last and atomically, so it is the commit point: the epoch reached, the
  logs of every finished epoch (they rebuild the dvclive curves and the training summary), the
  state of the stateful callbacks (best checkpoint, early stopping, plateau, timer), the
  random-generator states of the augmentation layers and of the model's own random layers
  (dropout: Keras keeps them out of the saved weights), and a fingerprint of what is being trained
  (params, seed, precision, data). A backup whose fingerprint differs is discarded, never resumed.

The best model so far is staged in the same folder, so it survives too. Re-running the stage
resumes: the same weights, optimizer, schedule position, data order (the shuffle is advanced by
the epochs done, the augmentation generators are restored), dropout masks and callback state, so
the resumed run ends with the same metrics as an uninterrupted one (tests/test_resume.py). The
folder is removed once the stage has written its outputs.

Reads and writes only the backup folder it is given. Used by ``cifar_dvc.training.loop``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from cifar_dvc import atomic

STATE_FILE = "state.json"
BEST_MODEL = "best.keras"  # the best epoch's model, staged here until the stage finishes
FORMAT = 1  # bump when state.json changes meaning: an old backup is then discarded


class Stateful(Protocol):
    """A callback whose state must survive an interruption."""

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


def file_digest(path: Path | str) -> str:
    """MD5 of a file's content (the data a backup was made from)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(**parts: Any) -> str:
    """A short hash of everything that must match for a backup to be resumed."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_state(directory: Path | str, expected_fingerprint: str) -> dict[str, Any] | None:
    """The backup's state if ``directory`` holds one made by the same run, else None.

    A backup of another run (params, data, seed or precision changed since) is removed: it can
    never be resumed, and it must not be mistaken for this run's later.
    """
    directory = Path(directory)
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("fingerprint") == expected_fingerprint \
            and (directory / state.get("weights", "")).is_file():
        return state
    clear(directory)
    return None


def clear(directory: Path | str) -> None:
    """Remove the backup folder (done once the stage's outputs are written)."""
    shutil.rmtree(directory, ignore_errors=True)


def generator_states(layer: keras.Layer | None) -> list[list[int]]:
    """The random-generator states of ``layer`` (the augmenter, or the model: its dropout layers),
    in a fixed order."""
    if layer is None:
        return []
    return [np.asarray(v.numpy()).tolist() for v in layer.variables if "seed_generator" in v.path]


def set_generator_states(layer: keras.Layer | None, states: list[list[int]]) -> None:
    """Restore what ``generator_states`` returned."""
    if layer is None:
        return
    variables = [v for v in layer.variables if "seed_generator" in v.path]
    for variable, value in zip(variables, states, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


class EpochBackup(keras.callbacks.Callback):
    """Backs up the run after every epoch and, given a loaded state, restores it at train begin.

    Put it last in the callback list: at an epoch's end every other callback has updated its state
    and added its logs; at train begin it restores their state after they have reset themselves.
    """

    def __init__(self, directory: Path | str, fingerprint: str, stateful: dict[str, Stateful],
                 augmenter: keras.Layer | None = None, resumed: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.stateful = stateful
        self.augmenter = augmenter
        self.resumed = resumed
        self.history: list[dict[str, float]] = list(resumed["history"]) if resumed else []
        self._prior = (float(resumed["seconds"]), float(resumed["cpu_seconds"])) if resumed else (0.0, 0.0)
        self._started = (time.perf_counter(), time.process_time())

    @property
    def seconds(self) -> float:
        """Wall seconds of training so far, the interrupted processes' included."""
        return self._prior[0] + time.perf_counter() - self._started[0]

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds (all threads) of training so far, the interrupted processes' included."""
        return self._prior[1] + time.process_time() - self._started[1]

    @property
    def initial_epoch(self) -> int:
        """Epochs finished before this process started (0 for a fresh run)."""
        return int(self.resumed["epoch"]) if self.resumed else 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._started = (time.perf_counter(), time.process_time())
        if not self.resumed:
            return
        # The optimizer must be built (the trainer does it when resuming), so its variables load too.
        self.model.load_weights(self.directory / self.resumed["weights"])
        # A backup written before the model's generators were kept has none: its dropout masks
        # start over (the run goes on, no longer bit-identical to an uninterrupted one).
        if "model_generators" in self.resumed:
            set_generator_states(self.model, self.resumed["model_generators"])
        for name, callback in self.stateful.items():
            callback.set_state(self.resumed["callbacks"][name])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        weights = f"epoch-{epoch + 1}.weights.h5"
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(self.directory / weights) as tmp:
            # Keras picks the format by suffix; the temporary name must end like the target.
            staged = tmp.with_name(tmp.name + ".weights.h5")
            self.model.save_weights(staged)
            staged.replace(tmp)
        atomic.write_json(self.directory / STATE_FILE, {
            "fingerprint": self.fingerprint,
            "epoch": epoch + 1,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "weights": weights,
            "history": self.history,
            "callbacks": {name: cb.get_state() for name, cb in self.stateful.items()},
            "generators": generator_states(self.augmenter),
            "model_generators": generator_states(self.model),
        })
        for old in self.directory.glob("epoch-*.weights.h5"):
            if old.name != weights:
                old.unlink(missing_ok=True)


class AttributeState:
    """The plain attributes ``names`` of a Keras callback as its resumable state.

    Keras' ``EarlyStopping`` (wait, best, best_epoch) and ``ReduceLROnPlateau`` (wait, best,
    cooldown_counter) keep their progress in attributes that ``on_train_begin`` resets.
    """

    def __init__(self, callback: keras.callbacks.Callback, names: tuple[str, ...]) -> None:
        self.callback, self.names = callback, names

    def get_state(self) -> dict[str, Any]:
        values = {name: getattr(self.callback, name, None) for name in self.names}
        return {name: None if v is None else float(v) for name, v in values.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        for name in self.names:
            value = state.get(name)
            setattr(self.callback, name, value if value is None or name == "best" else int(value))
