"""Evaluation of the trained variants and the report: metrics, figures, DVC plots, offline plots page.

- ``metrics``: confusion matrix, precision/recall/F1, loss, top-k, calibration (NumPy only).
- ``evaluate``: one variant on every set -> ``metrics/<name>.json`` and ``eval/<name>/``.
- ``figures``: the seeds' figures, one function each.
- ``report``: Table 2, plot data and figures -> ``plots/report/`` (``summary.json`` too).
- ``offline``: the self-contained HTML template of ``dvc plots show --html-template``.
- ``params``: the ``evaluate:`` and ``report:`` params sections.

Stages: ``python -m stages.evaluate`` and ``python -m stages.report``.
"""
