"""Timestep schedules: DreamTime's prioritized t(i) against its closed form, and the uniform window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.config import GenerationConfig
from backend.engine.methods import METHODS
from backend.engine.schedules.prioritized import TimePrioritizedSchedule
from backend.engine.schedules.uniform import UniformSchedule


def make_schedule(cfg: GenerationConfig, abar: torch.Tensor):
    return METHODS[cfg.method].make_schedule(cfg, abar)


T = 1000


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled-linear schedule: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
    return torch.from_numpy(np.cumprod(1.0 - betas)).float()


def closed_form_t(target: float, use_wd: bool = True, t_min: int = 20, t_max: int = 980) -> int:
    """DreamTime's t(i) written out independently of the module, straight from the formulas."""
    abar = sd_alphas_cumprod().double().numpy()
    ts = np.arange(t_min, t_max + 1, dtype=np.float64)
    w_p = np.ones_like(ts)
    hi, lo = ts > 800, ts < 500
    w_p[hi] = np.exp(-((ts[hi] - 800) ** 2) / (2 * 300**2))
    w_p[lo] = np.exp(-((ts[lo] - 500) ** 2) / (2 * 100**2))
    w = w_p * (np.sqrt((1 - abar[t_min : t_max + 1]) / abar[t_min : t_max + 1]) if use_wd else 1.0)
    p = w / w.sum()
    tail = np.array([p[k:].sum() for k in range(len(ts))])  # sum_{t'=t}^{t_max} p(t')
    return int(ts[np.argmin(np.abs(tail - target))])


@pytest.fixture(scope="module")
def tp() -> TimePrioritizedSchedule:
    return TimePrioritizedSchedule(sd_alphas_cumprod(), 20, 980)


def test_prioritized_is_non_increasing_from_t_max_to_t_min(tp: TimePrioritizedSchedule) -> None:
    n = 500
    ts = [tp(i, n) for i in range(n)]
    assert all(a >= b for a, b in zip(ts, ts[1:], strict=False))
    assert ts[0] >= 975 and ts[-1] <= 25
    assert all(20 <= t <= 980 for t in ts)


def test_prioritized_matches_closed_form(tp: TimePrioritizedSchedule) -> None:
    n = 101  # step i of n has progress i / (n - 1) = i / 100
    for i in range(0, n, 5):
        assert abs(tp(i, n) - closed_form_t(i / (n - 1))) <= 1, i


@pytest.mark.parametrize(("fraction", "expected"), [(0.1, 957), (0.5, 832), (0.9, 548)])
def test_prioritized_reference_values(tp: TimePrioritizedSchedule, fraction: float, expected: int) -> None:
    n = 11
    assert abs(tp(round(fraction * (n - 1)), n) - expected) <= 3


def test_prior_weight_only_variant_differs_and_matches_its_closed_form() -> None:
    wp_only = TimePrioritizedSchedule(sd_alphas_cumprod(), 20, 980, use_wd=False)
    with_wd = TimePrioritizedSchedule(sd_alphas_cumprod(), 20, 980, use_wd=True)
    n = 11
    assert wp_only(5, n) != with_wd(5, n)
    for i in range(n):
        assert abs(wp_only(i, n) - closed_form_t(i / (n - 1), use_wd=False)) <= 1


def test_prioritized_ignores_the_generator(tp: TimePrioritizedSchedule) -> None:
    g = torch.Generator().manual_seed(3)
    assert tp(7, 50, g) == tp(7, 50) == tp(7, 50, None)


def test_uniform_stays_in_window_and_covers_it() -> None:
    sched = UniformSchedule(20, 980)
    g = torch.Generator().manual_seed(0)
    ts = [sched(i, 2000, g) for i in range(2000)]
    assert min(ts) >= 20 and max(ts) <= 980
    assert min(ts) < 60 and max(ts) > 940  # really spans the window, not a point


def test_uniform_anneals_window_linearly() -> None:
    sched = UniformSchedule(500, 980, anneal_to=(20, 500))
    n = 101
    assert sched.window(0, n) == (500, 980)
    assert sched.window(50, n) == (260, 740)
    assert sched.window(100, n) == (20, 500)
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        lo, hi = sched.window(i, n)
        for _ in range(20):
            assert lo <= sched(i, n, g) <= hi
    early = [sched(0, n, g) for _ in range(200)]
    late = [sched(n - 1, n, g) for _ in range(200)]
    assert min(early) >= 500 and max(late) <= 500


def test_uniform_is_reproducible_from_the_generator() -> None:
    sched = UniformSchedule(20, 980)
    a = [sched(i, 10, torch.Generator().manual_seed(5)) for i in range(10)]
    b = [sched(i, 10, torch.Generator().manual_seed(5)) for i in range(10)]
    assert a == b


def test_make_schedule_per_method() -> None:
    abar = sd_alphas_cumprod()
    sds = make_schedule(GenerationConfig(prompt="x", method="sds"), abar)
    assert isinstance(sds, UniformSchedule) and (sds.t_min, sds.t_max, sds.anneal_to) == (20, 980, None)
    asd = make_schedule(GenerationConfig(prompt="x", method="asd"), abar)
    assert isinstance(asd, UniformSchedule) and (asd.t_min, asd.t_max, asd.anneal_to) == (500, 980, (20, 500))
    for method in ("tp-sds", "tp-asd"):
        assert isinstance(
            make_schedule(GenerationConfig(prompt="x", method=method), abar), TimePrioritizedSchedule
        )
    custom = make_schedule(
        GenerationConfig(prompt="x", method="sds", anneal_window=(0.3, 0.9, 0.1, 0.4)), abar
    )
    assert (custom.t_min, custom.t_max, custom.anneal_to) == (300, 900, (100, 400))
    wp_only = make_schedule(GenerationConfig(prompt="x", method="tp-sds", tp_use_wd=False), abar)
    assert wp_only.use_wd is False
