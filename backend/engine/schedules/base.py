"""What every timestep schedule shares: the interface, the schedule table, and the timestep window.

A schedule gives the diffusion timestep t for step i of N: `schedule(i, N, generator) -> int`. Timesteps
are integers in [0, T - 1]; step i runs from 0 to N - 1 and progress is i / (N - 1), so the first step
sits at the top of the window and the last at the bottom.

A schedule is a small object configured by its constructor; subclassing `TimestepSchedule` with a `name`
puts it in the table `SCHEDULES` (see `backend.engine.schedules`). Its `method_prefix` names the methods
it forms with each gradient rule: "" + "sds" = "sds", "tp-" + "sds" = "tp-sds".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from backend.config import GenerationConfig
    from backend.engine.rules.base import GradientRule


class TimestepSchedule:
    name: ClassVar[str]
    method_prefix: ClassVar[str]
    title_prefix: ClassVar[str]  # menu label prefix: "TP-" + "SDS"
    description: ClassVar[str]
    order: ClassVar[int] = 100  # place in menus

    table: ClassVar[dict[str, type[TimestepSchedule]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            TimestepSchedule.table[cls.name] = cls

    @classmethod
    def from_config(
        cls, cfg: GenerationConfig, alphas_cumprod: Tensor, rule: type[GradientRule]
    ) -> TimestepSchedule:
        """The schedule as `cfg` sets it up for a prior with these alphas_cumprod [T] and this rule."""
        raise NotImplementedError

    def __call__(self, step: int, total: int, generator: torch.Generator) -> int:
        raise NotImplementedError

    @classmethod
    def describe(cls, rule: type[GradientRule]) -> str:
        """One line for menus: this schedule as it behaves with `rule`."""
        return cls.description


def progress(step: int, total: int) -> float:
    """Fraction of the run done at `step` (0-based): 0 at the first step, 1 at the last."""
    return min(max(step / max(total - 1, 1), 0.0), 1.0)


def timestep_bounds(cfg: GenerationConfig, num_train_timesteps: int) -> tuple[int, int]:
    """[t_min, t_max] in integer timesteps from the config's fractions of T (0.02 T, 0.98 T; a t_max left
    None, the model's choice, is 0.98 here: `DistillationRun` fills in the model's own first)."""
    from backend.config import DEFAULT_T_MAX

    T = num_train_timesteps
    t_max = DEFAULT_T_MAX if cfg.t_max is None else cfg.t_max
    return round(cfg.t_min * T), min(round(t_max * T), T - 1)
