"""Stopping a generation within a bounded time, whatever it is doing.

The engine checks the stop flag at every boundary it controls: steps, export stages, and the chunks of
the loops over the density grid, the colours and the texels (`check` arguments). Two kinds of work have no
such boundary and get one here:

- a training step is a few large tensor operations (a 512 px render: about a minute on a CPU):
  `stop_inside_autograd` checks the flag whenever autograd saves a tensor for the backward pass and whenever
  the backward pass reads one back, i.e. between operations, forward and backward, and at the
  `checkpoint()`s inside the longest single operation (the hash grid's loop over its levels);
- loading a model is one library call that may wait on the network (an unreachable hub: 25 s of retries):
  `call_stoppable` runs it on a helper thread and stops waiting as soon as the flag rises; the abandoned
  call runs to its end in the background and its result is dropped.

What remains unchecked is one library call at a time (marching cubes, decimation, the UV unwrap), bounded
by the API's size limits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch

from backend.errors import GenerationCancelled

T = TypeVar("T")
# Raises GenerationCancelled when the run must stop; returns otherwise.
Check = Callable[[], None]


def no_check() -> None:
    """The check of a run nobody can stop."""


def stop_check(should_stop: Callable[[], bool] | None) -> Check:
    """A check that raises GenerationCancelled once `should_stop()` is true."""
    if should_stop is None:
        return no_check

    def check() -> None:
        if should_stop():
            raise GenerationCancelled()

    return check


_step = threading.local()


@contextlib.contextmanager
def stop_inside_autograd(check: Check) -> Iterator[None]:
    """Run `check` between the operations of the forward and the backward pass of graphs built inside, and
    at every `checkpoint()` in between (on this thread)."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        check()
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        check()
        return tensor

    outer = getattr(_step, "check", None)
    _step.check = check
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _step.check = outer


def checkpoint() -> None:
    """Inside `stop_inside_autograd`: run its check. For the loops of a single custom operation (the hash
    grid's levels: seconds each at 512 px), which autograd's hooks only see once it has finished; being
    ambient spares every layer between the step and the operation a check argument."""
    check = getattr(_step, "check", None)
    if check is not None:
        check()


def call_stoppable(fn: Callable[[], T], check: Check, poll_s: float = 0.05) -> T:
    """fn() on a helper thread, waited for while `check` passes: fn's value or exception, or the check's."""
    if check is no_check:
        return fn()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="dreamsmith-stoppable", daemon=True).start()
    while not done.wait(poll_s):
        check()
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["value"])
