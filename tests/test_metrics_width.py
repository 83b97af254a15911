"""`dvc metrics show` and `dvc metrics diff` of every variant fit a 200-column terminal.

The widest metrics file there can be (a BatchNorm variant with adaptation, the corruption suite and
the nearest-resize sets: 13 numbers with 5+ decimals, a loss above 1), made by ``metrics_json``
itself, is written for every variant of ``params.yaml`` into a copy of the project
(``cifar_dvc.demo.copy_project``: its real ``dvc.yaml`` declares which files are metrics), and the
real ``dvc`` prints the tables. ``COLUMNS=1000`` keeps rich from fitting them to a terminal, so the
lines are as long as the tables are wide.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cifar_dvc import atomic, evalsets
from cifar_dvc.demo import copy_project, run_dvc
from cifar_dvc.evaluation import corruptions, evaluate

WIDTH = 200  # the terminal the tables must fit


def widest_metrics(rng: np.random.Generator) -> dict[str, Any]:
    """``metrics/<variant>.json`` of a run with every part on and every number present."""
    names = [*evalsets.SET_NAMES, *evalsets.adapted_sets()]
    results = {name: {"scalars": {"accuracy": rng.uniform(0.1, 0.99), "loss": rng.uniform(1.1, 9.9),
                                  "f1_macro": rng.uniform(0.1, 0.99), "ece": rng.uniform(0.01, 0.2)}}
               for name in names}
    rows = [{"corruption": name, "severity": severity, "n": 500, "accuracy": rng.uniform(0.1, 0.99),
             "accuracy_adapted": rng.uniform(0.1, 0.99)}
            for name in corruptions.CORRUPTIONS for severity in corruptions.SEVERITIES]
    robustness = evaluate.Robustness(adapt_bn=True, batchnorm=True, prior=0.0, images=500, seed=0, rows=rows)
    return evaluate.metrics_json(results, robustness)


def _write(repo: Path, variants: list[str], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    metrics = {}
    for name in variants:
        metrics[name] = widest_metrics(rng)
        atomic.write_json(repo / "metrics" / f"{name}.json", metrics[name])
    return metrics


def _too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


def test_metrics_show_and_diff_of_every_variant_fit_200_columns(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo = copy_project(tmp_path / "project")
    variants = list(yaml.safe_load((repo / "params.yaml").read_text())["variants"])
    assert "fast_long" in variants  # the longest path, metrics/fast_long.json
    first = _write(repo, variants, seed=0)
    some = first[variants[0]]
    assert len(some) == 13 and all(isinstance(v, float) for v in some.values())  # every column, no null
    assert some[evalsets.metric_key(evalsets.TEST, "loss")] > 1
    for git in (["add", "-A"], ["-c", "commit.gpgsign=false", "commit", "-q", "-m", "metrics"]):
        subprocess.run(["git", *git], cwd=repo, check=True)
    monkeypatch.setenv("COLUMNS", "1000")  # run_dvc passes the environment on

    shown = run_dvc(repo, "metrics", "show").stdout
    lines = shown.splitlines()
    # one unwrapped table: a header with every key, one row of 13 numbers per variant
    assert len(lines) == 1 + len(variants) and all(key in lines[0].split() for key in some), shown
    assert all(len(line.split()) == 1 + len(some) for line in lines[1:]), shown
    assert not _too_wide(shown), f"`dvc metrics show` is {max(map(len, lines))} columns wide:\n{shown}"

    _write(repo, variants, seed=1)  # every number changes
    diff = run_dvc(repo, "metrics", "diff").stdout
    assert len(diff.splitlines()) == 1 + len(variants) * len(some), diff
    assert not _too_wide(diff), f"`dvc metrics diff` is wider than {WIDTH} columns:\n{diff}"
