"""The gradient rules, found by name: every module of this package that subclasses `GradientRule` with a
`name` adds its rule to `RULES`. A new rule is one new file here (plus its test)."""

from __future__ import annotations

import importlib
import pkgutil

from backend.engine.rules.base import GradientRule, score_distillation_loss

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

RULES: dict[str, type[GradientRule]] = dict(GradientRule.table)

__all__ = ["RULES", "GradientRule", "score_distillation_loss"]
