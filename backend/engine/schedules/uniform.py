"""Uniform timesteps (DreamFusion): t ~ U[t_min, t_max]; the window may slide linearly over the run
(ScaleDreamer anneals ASD's window from [0.5, 0.98] T to [0.02, 0.5] T)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from backend.engine.schedules.base import TimestepSchedule, progress, timestep_bounds

if TYPE_CHECKING:
    from backend.config import GenerationConfig
    from backend.engine.rules.base import GradientRule


class UniformSchedule(TimestepSchedule):
    """t ~ U[lo, hi] (integers, inclusive); [lo, hi] goes linearly from [t_min, t_max] to `anneal_to`."""

    name = "uniform"
    method_prefix = ""
    title_prefix = ""
    order = 1
    description = "random timesteps, uniform in the window"

    def __init__(self, t_min: int, t_max: int, anneal_to: tuple[int, int] | None = None) -> None:
        if not 0 <= t_min <= t_max:
            raise ValueError(f"need 0 <= t_min <= t_max, got {t_min}, {t_max}")
        if anneal_to is not None and not 0 <= anneal_to[0] <= anneal_to[1]:
            raise ValueError(f"anneal_to must be an increasing pair, got {anneal_to}")
        self.t_min = int(t_min)
        self.t_max = int(t_max)
        self.anneal_to = None if anneal_to is None else (int(anneal_to[0]), int(anneal_to[1]))

    @classmethod
    def from_config(
        cls, cfg: GenerationConfig, alphas_cumprod: Tensor, rule: type[GradientRule]
    ) -> UniformSchedule:
        """[t_min, t_max] of the config, or the annealed window the config or the rule asks for."""
        T = int(alphas_cumprod.shape[0])
        window = cfg.anneal_window or rule.uniform_window
        if window is None:
            return cls(*timestep_bounds(cfg, T))

        def at(fraction: float) -> int:
            return min(max(round(fraction * T), 0), T - 1)

        start_lo, start_hi, end_lo, end_hi = window
        return cls(at(start_lo), at(start_hi), anneal_to=(at(end_lo), at(end_hi)))

    @classmethod
    def describe(cls, rule: type[GradientRule]) -> str:
        if rule.uniform_window is not None:
            return "random timesteps in a window sliding from high to low noise"
        return cls.description

    def window(self, step: int, total: int) -> tuple[int, int]:
        """The [lo, hi] window in force at `step`."""
        if self.anneal_to is None:
            return self.t_min, self.t_max
        f = progress(step, total)
        lo = round((1 - f) * self.t_min + f * self.anneal_to[0])
        hi = round((1 - f) * self.t_max + f * self.anneal_to[1])
        return lo, hi

    def __call__(self, step: int, total: int, generator: torch.Generator) -> int:
        lo, hi = self.window(step, total)
        return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())

    def __repr__(self) -> str:
        return f"UniformSchedule(t_min={self.t_min}, t_max={self.t_max}, anneal_to={self.anneal_to})"
