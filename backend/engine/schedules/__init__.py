"""The timestep schedules, found by name: every module of this package that subclasses `TimestepSchedule`
with a `name` adds its schedule to `SCHEDULES`. A new schedule is one new file here (plus its test)."""

from __future__ import annotations

import importlib
import pkgutil

from backend.engine.schedules.base import TimestepSchedule, timestep_bounds

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

SCHEDULES: dict[str, type[TimestepSchedule]] = dict(TimestepSchedule.table)

__all__ = ["SCHEDULES", "TimestepSchedule", "timestep_bounds"]
