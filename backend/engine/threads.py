"""How many torch threads a run on the CPU uses (`GenerationConfig.cpu_threads`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(count: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with `count` torch threads when it runs on the CPU, then put the process's count back.
    None, or another device: the threads stay as they are."""
    if count is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
