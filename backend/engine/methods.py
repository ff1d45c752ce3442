"""Methods: every timestep schedule paired with every gradient rule, named and described for users.

The method list that the CLI offers, the HTTP schema accepts, `/v1/health` reports and the add-on's menu
shows is this table: a new rule (`backend/engine/rules/`) or schedule (`backend/engine/schedules/`) file
adds its methods here without further edits. Names: the schedule's prefix + the rule's name ("tp-sds").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from backend.engine.rules import RULES, GradientRule
from backend.engine.schedules import SCHEDULES, TimestepSchedule

if TYPE_CHECKING:
    from backend.config import GenerationConfig


@dataclass(frozen=True)
class Method:
    name: str
    schedule: type[TimestepSchedule]
    rule: type[GradientRule]

    @property
    def title(self) -> str:
        return self.schedule.title_prefix + self.rule.title

    @property
    def description(self) -> str:
        return f"{self.rule.description}; {self.schedule.describe(self.rule)}"

    def make_rule(self, cfg: GenerationConfig, t_min: int) -> GradientRule:
        return self.rule.from_config(cfg, t_min)

    def make_schedule(self, cfg: GenerationConfig, alphas_cumprod: Tensor) -> TimestepSchedule:
        return self.schedule.from_config(cfg, alphas_cumprod, self.rule)

    def info(self) -> dict[str, object]:
        """Plain data for clients (GET /v1/health)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "schedule": self.schedule.name,
            "rule": self.rule.name,
            "guidance_scale": self.rule.default_guidance_scale,
        }


def _table() -> dict[str, Method]:
    out: dict[str, Method] = {}
    for rule in sorted(RULES.values(), key=lambda r: (r.order, r.name)):
        for schedule in sorted(SCHEDULES.values(), key=lambda s: (s.order, s.name)):
            name = schedule.method_prefix + rule.name
            out[name] = Method(name, schedule, rule)
    return out


METHODS: dict[str, Method] = _table()
