"""DreamTime's time-prioritized timesteps (TP-SDS; Huang et al. 2023, eq. 7-9): deterministic, non-increasing

    t(i) = argmin_t | sum_{t'=t}^{t_max} p(t') - i/N |,   p(t) = W_d(t) W_p(t) / Z over [t_min, t_max]

W_p(t) = exp(-(t - m1)^2 / 2 s1^2) for t > m1; 1 on [m2, m1]; exp(-(t - m2)^2 / 2 s2^2) for t < m2
W_d(t) = sqrt((1 - abar_t) / abar_t), the diffusion model's training weight (optional: W_p alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from backend.engine.schedules.base import TimestepSchedule, progress, timestep_bounds

if TYPE_CHECKING:
    from backend.config import GenerationConfig
    from backend.engine.rules.base import GradientRule


def prior_weight(t: NDArray[Any], m1: float, m2: float, s1: float, s2: float) -> NDArray[np.float64]:
    """DreamTime W_p(t): a flat top on [m2, m1] with Gaussian shoulders of widths s1 (above), s2 (below)."""
    t = np.asarray(t, dtype=np.float64)
    above = np.exp(-((t - m1) ** 2) / (2 * s1**2))
    below = np.exp(-((t - m2) ** 2) / (2 * s2**2))
    return np.where(t > m1, above, np.where(t < m2, below, 1.0))


def diffusion_weight(alphas_cumprod: NDArray[Any]) -> NDArray[np.float64]:
    """DreamTime W_d(t) = sqrt((1 - abar_t) / abar_t): the diffusion model's training weight."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return cast(NDArray[np.float64], np.sqrt((1 - abar) / abar))


class TimePrioritizedSchedule(TimestepSchedule):
    """DreamTime (TP-SDS): t(i) looked up in the tail sums of p(t); the generator is not used."""

    name = "prioritized"
    method_prefix = "tp-"
    title_prefix = "TP-"
    order = 0
    description = "DreamTime's time-prioritized, decreasing timesteps (converges sooner)"

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

    @classmethod
    def from_config(
        cls, cfg: GenerationConfig, alphas_cumprod: Tensor, rule: type[GradientRule]
    ) -> TimePrioritizedSchedule:
        t_min, t_max = timestep_bounds(cfg, int(alphas_cumprod.shape[0]))
        return cls(
            alphas_cumprod,
            t_min,
            t_max,
            m1=cfg.tp_m1,
            m2=cfg.tp_m2,
            s1=cfg.tp_s1,
            s2=cfg.tp_s2,
            use_wd=cfg.tp_use_wd,
        )

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        target = progress(step, total)  # i / N
        # Ties go to the larger t (argmin returns the first index, so search from the top).
        k = len(self.tail) - 1 - int(np.argmin(np.abs(self.tail[::-1] - target)))
        return int(self.timesteps[k])

    def __repr__(self) -> str:
        return f"TimePrioritizedSchedule(t_min={self.t_min}, t_max={self.t_max}, use_wd={self.use_wd})"
