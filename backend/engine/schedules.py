"""Timestep schedules: which diffusion timestep t the score distillation uses at step i of N.

- `UniformSchedule`: t ~ U[t_min, t_max] as in DreamFusion; the window may slide linearly over the run
  (ScaleDreamer, ASD: [500, 980] -> [20, 500]).
- `TimePrioritizedSchedule`: DreamTime's deterministic, non-increasing t(i) (TP-SDS).

Timesteps are integers in [0, T - 1]; step i runs from 0 to N - 1 and progress is i / (N - 1), so the
first step sits at the top of the window and the last at the bottom.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from backend.config import DEFAULT_T_MAX, GenerationConfig

# ScaleDreamer's annealed window for ASD, as fractions of T: [0.5, 0.98] T -> [0.02, 0.5] T.
ASD_ANNEAL_WINDOW = (0.5, 0.98, 0.02, 0.5)


def _progress(step: int, total: int) -> float:
    """Fraction of the run done at `step` (0-based): 0 at the first step, 1 at the last."""
    return min(max(step / max(total - 1, 1), 0.0), 1.0)


class UniformSchedule:
    """t ~ U[lo, hi] (integers, inclusive); [lo, hi] goes linearly from [t_min, t_max] to `anneal_to`."""

    def __init__(self, t_min: int, t_max: int, anneal_to: tuple[int, int] | None = None) -> None:
        if not 0 <= t_min <= t_max:
            raise ValueError(f"need 0 <= t_min <= t_max, got {t_min}, {t_max}")
        if anneal_to is not None and not 0 <= anneal_to[0] <= anneal_to[1]:
            raise ValueError(f"anneal_to must be an increasing pair, got {anneal_to}")
        self.t_min = int(t_min)
        self.t_max = int(t_max)
        self.anneal_to = None if anneal_to is None else (int(anneal_to[0]), int(anneal_to[1]))

    def window(self, step: int, total: int) -> tuple[int, int]:
        """The [lo, hi] window in force at `step`."""
        if self.anneal_to is None:
            return self.t_min, self.t_max
        f = _progress(step, total)
        lo = round((1 - f) * self.t_min + f * self.anneal_to[0])
        hi = round((1 - f) * self.t_max + f * self.anneal_to[1])
        return lo, hi

    def __call__(self, step: int, total: int, generator: torch.Generator) -> int:
        lo, hi = self.window(step, total)
        return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())

    def __repr__(self) -> str:
        return f"UniformSchedule(t_min={self.t_min}, t_max={self.t_max}, anneal_to={self.anneal_to})"


def prior_weight(t: np.ndarray, m1: float, m2: float, s1: float, s2: float) -> np.ndarray:
    """DreamTime W_p(t): a flat top on [m2, m1] with Gaussian shoulders of widths s1 (above), s2 (below)."""
    t = np.asarray(t, dtype=np.float64)
    above = np.exp(-((t - m1) ** 2) / (2 * s1**2))
    below = np.exp(-((t - m2) ** 2) / (2 * s2**2))
    return np.where(t > m1, above, np.where(t < m2, below, 1.0))


def diffusion_weight(alphas_cumprod: np.ndarray) -> np.ndarray:
    """DreamTime W_d(t) = sqrt((1 - abar_t) / abar_t): the diffusion model's training weight."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1 - abar) / abar)


class TimePrioritizedSchedule:
    """DreamTime (TP-SDS): deterministic, non-increasing t(i) = argmin_t |sum_{t'=t}^{t_max} p(t') - i/N|.

    p(t) = W_d(t) W_p(t) / Z over t in [t_min, t_max] (W_p alone when `use_wd` is False).
    """

    def __init__(
        self,
        alphas_cumprod: Tensor,
        t_min: int,
        t_max: int,
        m1: float = 800.0,
        m2: float = 500.0,
        s1: float = 300.0,
        s2: float = 100.0,
        use_wd: bool = True,
    ) -> None:
        abar = alphas_cumprod.detach().double().cpu().numpy()
        if not 0 <= t_min < t_max < len(abar):
            raise ValueError(f"need 0 <= t_min < t_max < T={len(abar)}, got {t_min}, {t_max}")
        self.t_min, self.t_max, self.use_wd = int(t_min), int(t_max), use_wd
        self.timesteps = np.arange(self.t_min, self.t_max + 1)  # [K]
        weight = prior_weight(self.timesteps, m1, m2, s1, s2)
        if use_wd:
            weight = weight * diffusion_weight(abar[self.timesteps])
        self.p = weight / weight.sum()  # p(t), normalized over [t_min, t_max]
        # tail[k] = sum_{t' = timesteps[k]}^{t_max} p(t'): the table every call looks up.
        self.tail = np.cumsum(self.p[::-1])[::-1]

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        target = _progress(step, total)  # i / N
        # Ties go to the larger t (argmin returns the first index, so search from the top).
        k = len(self.tail) - 1 - int(np.argmin(np.abs(self.tail[::-1] - target)))
        return int(self.timesteps[k])

    def __repr__(self) -> str:
        return f"TimePrioritizedSchedule(t_min={self.t_min}, t_max={self.t_max}, use_wd={self.use_wd})"


def timestep_bounds(cfg: GenerationConfig, num_train_timesteps: int) -> tuple[int, int]:
    """[t_min, t_max] in integer timesteps from the config's fractions of T (0.02 T, 0.98 T; a t_max left
    None, the model's choice, is 0.98 here: `DistillationRun` fills in the model's own first)."""
    T = num_train_timesteps
    t_max = DEFAULT_T_MAX if cfg.t_max is None else cfg.t_max
    return round(cfg.t_min * T), min(round(t_max * T), T - 1)


def make_schedule(cfg: GenerationConfig, alphas_cumprod: Tensor) -> UniformSchedule | TimePrioritizedSchedule:
    """The schedule of `cfg.method`: uniform (sds, asd) or time-prioritized (tp-sds, tp-asd)."""
    T = int(alphas_cumprod.shape[0])
    t_min, t_max = timestep_bounds(cfg, T)
    if cfg.schedule_kind == "prioritized":
        return TimePrioritizedSchedule(
            alphas_cumprod,
            t_min,
            t_max,
            m1=cfg.tp_m1,
            m2=cfg.tp_m2,
            s1=cfg.tp_s1,
            s2=cfg.tp_s2,
            use_wd=cfg.tp_use_wd,
        )
    window = cfg.anneal_window
    if window is None and cfg.gradient_rule == "asd":
        window = ASD_ANNEAL_WINDOW
    if window is None:
        return UniformSchedule(t_min, t_max)

    def at(fraction: float) -> int:
        return min(max(round(fraction * T), 0), T - 1)

    start_lo, start_hi, end_lo, end_hi = window
    return UniformSchedule(at(start_lo), at(start_hi), anneal_to=(at(end_lo), at(end_hi)))
