"""Training callbacks of airbench's recipe that Keras lacks: lookahead and the whitening-bias freeze.

- ``Lookahead`` (``optimizer.lookahead``): every 5 steps, an average of the model's weights *and*
  BatchNorm running statistics is moved towards the current ones and copied back into the model;
  at the last step the model takes the average. Keras' ``use_ema`` averages the trainable weights
  only, and never copies back during training.
- ``WhitenBiasFreeze`` (``whiten_bias_epochs``): the whitening stem's bias trains for the first
  epochs only, then is frozen.

Both take their position from the run itself (the optimizer's step count, the epoch index fit
passes), so a resumed run (``cifar_dvc.training.resume``) goes on exactly; the lookahead average
is the one piece of state of its own, saved beside the backup (``Lookahead.get_state``).

Reads and writes only the backup folder it is given (``state_dir``). Used by
``cifar_dvc.training.loop`` (``dvc repro train@<variant>``) and ``benchmarks/fast_recipe.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from cifar_dvc import atomic
from cifar_dvc.models.fast import WHITEN_BIAS_LAYER
from cifar_dvc.training.variant import VariantParams

# airbench94 (utils.py, train): `if current_steps % 5 == 0: lookahead_state.update(...)`
LOOKAHEAD_EVERY = 5


def lookahead_decay(step: int, total_steps: int) -> float:
    """airbench's weight of the old average at ``step``: ``0.95**5 * (step / total)**3``.

    (utils.py: ``alpha_schedule = 0.95**5 * (torch.arange(total_train_steps+1) / total_train_steps)**3``.)
    Near 0 early, so the average is the current weights while they move fast; 0.77 at the end,
    when averaging the last few hundred steps smooths the noise of the final, low learning rate.
    """
    return 0.95**5 * (min(step, total_steps) / total_steps) ** 3


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every ``every`` steps, ``avg = decay * avg + (1 - decay) * w; w = avg``.

    As airbench's ``LookaheadState`` (utils.py) it covers every floating-point variable of the
    model's state, BatchNorm's running mean and variance included (their ``state_dict``), and
    at the last step (``total_steps``) copies the average into the model (``update(decay=1.0)``).
    It needs a call after every step: ``steps_per_execution: 1`` (``VariantParams.validate``).
    ``state_dir``: where ``get_state`` saves the average for a resume; None = not resumable.
    """

    def __init__(self, total_steps: int, every: int = LOOKAHEAD_EVERY,
                 state_dir: Path | str | None = None) -> None:
        super().__init__()
        if total_steps < 1 or every < 1:
            raise ValueError(f"total_steps and every must be >= 1, got {total_steps} and {every}")
        self.total_steps, self.every = total_steps, every
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.average: list[np.ndarray] | None = None
        self._variables: list[Any] = []
        self._saved: str | None = None  # the file of the last state handed out

    def on_train_begin(self, logs: dict | None = None) -> None:
        # model.weights = trainable + non-trainable (BN statistics, the frozen whitening kernel);
        # integer state (none in Keras' BN, airbench's num_batches_tracked) is skipped as airbench
        # does. Sorted by path: freezing a layer moves its weights within model.weights.
        self._variables = sorted((v for v in self.model.weights if "float" in str(v.dtype)),
                                 key=lambda v: v.path)
        # airbench copies the net before its whitening init; here after it (the loop sets the stem
        # while building), which only spares the average a tiny share of the random stem.
        self.average = [np.array(v.numpy(), dtype=np.float32) for v in self._variables]

    def update(self, decay: float) -> None:
        """Move the average towards the model's weights by ``1 - decay`` and copy it back."""
        if self.average is None:
            raise RuntimeError("Lookahead.update before on_train_begin")
        for avg, variable in zip(self.average, self._variables, strict=True):
            avg += (1.0 - decay) * (np.asarray(variable.numpy(), np.float32) - avg)
            variable.assign(avg.astype(variable.dtype))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.every == 0:
            self.update(lookahead_decay(step, self.total_steps))
        if step == self.total_steps:
            self.update(1.0)  # the final weights are the average

    def get_state(self) -> dict[str, Any]:
        """The average, saved as ``lookahead-<step>.npz`` in ``state_dir`` (the JSON names it)."""
        if self.average is None or self.state_dir is None:
            return {"file": None}
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"lookahead-{step}.npz"
        atomic.save_npz(self.state_dir / name, **{f"v{i}": a for i, a in enumerate(self.average)})
        # Keep the file the last committed state.json may still name, until this one is committed.
        for old in self.state_dir.glob("lookahead-*.npz"):
            if old.name not in (name, self._saved):
                old.unlink(missing_ok=True)
        self._saved = name
        return {"file": name}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("file") is None or self.state_dir is None:
            return
        with np.load(self.state_dir / state["file"]) as saved:
            self.average = [np.array(saved[f"v{i}"]) for i in range(len(saved.files))]
        self._saved = state["file"]


class WhitenBiasFreeze(keras.callbacks.Callback):
    """Freezes the whitening stem's bias from epoch ``epochs`` on (airbench94: 3).

    airbench (utils.py, train): ``model[0].bias.requires_grad = (epoch < whiten_bias_epochs)``.
    Frozen means no gradient, no momentum and no weight decay, as a PyTorch parameter without a
    gradient: the layer leaves the trainable variables and the train step is traced again (once).
    The epoch comes from fit, so a run resumed after epoch 3 starts frozen.
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def freeze(self) -> None:
        """Take the bias out of training now (once)."""
        layer = self.model.get_layer(WHITEN_BIAS_LAYER)  # ValueError if the model has none
        if layer.trainable:
            layer.trainable = False
            self.model.make_train_function(force=True)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch >= self.epochs:
            self.freeze()

    def get_state(self) -> dict[str, Any]:
        return {"frozen": not self.model.get_layer(WHITEN_BIAS_LAYER).trainable}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("frozen"):
            self.freeze()


def recipe_callbacks(variant: VariantParams, steps_per_epoch: int, epochs: int,
                     state_dir: Path | str | None = None) -> dict[str, keras.callbacks.Callback]:
    """The callbacks ``variant`` switches on, by name (each also a resumable state); {} if none.

    ``epochs`` is the run's (``train.max_epochs`` applied): the lookahead's schedule spans it.
    """
    found: dict[str, keras.callbacks.Callback] = {}
    if variant.whiten_bias_epochs:
        found["whiten_bias"] = WhitenBiasFreeze(variant.whiten_bias_epochs)
    if variant.optimizer.lookahead:
        found["lookahead"] = Lookahead(steps_per_epoch * epochs, state_dir=state_dir)
    return found
