"""Training of the model variants: params, tf.data input, augmentation, optimizers, the fit loop.

- ``variant``: the ``train:`` section and the ``variants.<name>:`` dataclasses (light to import).
- ``data``: uint8 arrays -> shuffled, augmented, normalized float32 batches (tf.data).
- ``augment``: Keras preprocessing layers (+ channel shift, cutout, pad-and-crop) from params.
- ``optim``: optimizers, learning-rate schedules, the plateau callback.
- ``loop``: ``train_variant``, the whole run: fit, dvclive logs, best model, sidecar.

Submodules import TensorFlow; this package itself imports nothing heavy.
Run through ``python -m stages.train`` (``dvc repro train@<variant>``).
"""
