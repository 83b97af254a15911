"""Data sets of the pipeline: download, safe reading, validation, the synthetic set, and splitting.

- ``params``: the ``data:`` and ``prepare:`` params sections as dataclasses, and the top-level seed.
- ``sources``: where each data set comes from (official URLs, md5s, archive file names).
- ``download``: the ``fetch`` stage's logic (reuse a local copy, or download with md5 check).
- ``safe_pickle`` / ``archive``: a restricted unpickler and in-memory tar member reading.
- ``cifar`` / ``mnist``: readers that validate the official files and return uint8 NHWC arrays.
- ``synthetic``: a generated data set written in the official CIFAR-10 pickle layout.
- ``ingest`` / ``split``: the ``ingest`` and ``prepare`` stages' logic.

Nothing here imports TensorFlow, so ``fetch``, ``ingest`` and ``prepare`` start fast.
"""
