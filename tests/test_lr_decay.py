"""The learning-rate decay of per-prompt runs (the `lr_decay` setting, backend/engine/optimize.py)."""

from __future__ import annotations

import math

import pytest
import torch

from backend.engine.optimize import decay_learning_rates


def optimizer() -> torch.optim.Adam:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.Adam([{"params": [a], "lr": 1e-2}, {"params": [b], "lr": 1e-3}])


def test_rates_fall_from_the_start_to_decay_times_the_start_at_the_last_step() -> None:
    opt = optimizer()
    start = [g["lr"] for g in opt.param_groups]
    seen = []
    for step in range(5):
        decay_learning_rates(opt, start, 0.1, step, 5)
        seen.append([g["lr"] for g in opt.param_groups])
    assert seen[0] == pytest.approx(start)
    assert seen[-1] == pytest.approx([1e-3, 1e-4])
    assert seen[2] == pytest.approx([1e-2 * math.sqrt(0.1), 1e-3 * math.sqrt(0.1)])  # halfway: sqrt(decay)
    assert all(a[0] > b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_no_decay_keeps_the_rates_and_the_rate_depends_on_the_step_alone() -> None:
    opt = optimizer()
    start = [g["lr"] for g in opt.param_groups]
    decay_learning_rates(opt, start, 1.0, 3, 5)
    assert [g["lr"] for g in opt.param_groups] == start
    # A resumed run sets the same rate at step 3 whatever came before it.
    fresh = optimizer()
    decay_learning_rates(fresh, start, 0.3, 3, 5)
    decay_learning_rates(opt, start, 0.3, 0, 5)
    decay_learning_rates(opt, start, 0.3, 3, 5)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in fresh.param_groups]
