"""Generate Variations: the same settings with N seeds (seed, seed + 1, ...), queued as N jobs, each with its
progress and preview, kept for the artist to import the ones they want.

`VariationSet.tick()` makes at most one short HTTP call, like `GenerationRun.tick()`: it submits the next
job, or advances the first unfinished one (the backend runs its jobs one at a time, oldest first, so the
others wait in its queue and have nothing new to say), or, once cancelled, cancels the next one. A
finished job's files are downloaded and handed to `keep_result` instead of being imported: importing is
the artist's choice. No bpy here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import BackendClient, BackendError, GenerationRequest
from .runner import Downloaded, GenerationRun

MAX_SEED = 2**31 - 1
# keep_result(index, downloaded) -> what the variation holds once finished (e.g. its history entry).
KeepResult = Callable[[int, Downloaded], Any]


def variation_seeds(seed: int, count: int) -> list[int]:
    """seed, seed + 1, ... (wrapping within the backend's seed range)."""
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


class VariationSet:
    """N runs of one request that differ only in their seed."""

    def __init__(
        self,
        client: BackendClient,
        request: GenerationRequest,
        count: int,
        cache_dir: Path,
        keep_result: KeepResult,
        *,
        fetch_previews: bool = True,
    ) -> None:
        self.request = request
        self.keep_result = keep_result
        self.runs: list[GenerationRun] = []
        for i, seed in enumerate(variation_seeds(request.seed, count)):
            # No live meshes: only a single Generate shows one in the viewport.
            variant = dataclasses.replace(request, seed=seed, live_every=0)
            self.runs.append(
                GenerationRun(
                    client,
                    variant,
                    cache_dir,
                    functools.partial(self._keep, i),
                    fetch_previews=fetch_previews,
                    final_preview=fetch_previews,  # the finished shape, to choose from
                )
            )
        self.target: Any = None  # where the caller puts imported variations (opaque here)
        self.imported: dict[int, str] = {}  # variation index -> name of the object it was imported as
        self._cancel_requested = False

    # -- state -----------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.runs)

    @property
    def cancelled(self) -> bool:
        return self._cancel_requested

    @property
    def front(self) -> GenerationRun | None:
        """The first unfinished run: the one the backend runs (or will run) first."""
        return next((run for run in self.runs if not run.finished), None)

    @property
    def waiting_on_backend(self) -> bool:
        front = self.front
        return front is not None and front.job_id is not None and front.waiting_on_backend

    @property
    def progress(self) -> float:
        """Fraction of the whole set done, in [0, 1]."""
        if not self.runs:
            return 1.0
        total = 0.0
        for run in self.runs:
            if run.finished:
                total += 1.0
            elif run.status is not None:
                total += run.status.progress
        return total / len(self.runs)

    def succeeded(self) -> list[int]:
        return [i for i, run in enumerate(self.runs) if run.outcome == "succeeded"]

    def result(self, index: int) -> Any:
        """What `keep_result` returned for variation `index`, or None while it has none."""
        run = self.runs[index] if 0 <= index < len(self.runs) else None
        return run.imported if run is not None and run.outcome == "succeeded" else None

    def describe(self) -> str:
        done = sum(1 for run in self.runs if run.finished)
        text = f"{done} of {len(self.runs)} variations done"
        front = self.front
        if front is not None and not self._cancel_requested:
            text += f"; seed {front.request.seed}: {front.describe()}"
        elif self._cancel_requested and not self.finished:
            text += "; cancelling..."
        return text

    # -- actions ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Submit the first job (one call); raises BackendError when the backend is down or refuses it,
        so a set that cannot start queues nothing."""
        self.runs[0].start()

    def request_cancel(self) -> None:
        """Cancel every job that has not finished, one per tick."""
        self._cancel_requested = True

    def tick(self) -> bool:
        """Advance by at most one HTTP call. Returns True once every variation has finished."""
        if self._cancel_requested:
            for run in self.runs:
                if run.finished:
                    continue
                run.request_cancel()
                run.tick()  # a job never submitted ends without a call: go on to the next one
                if run.job_id is not None:
                    break
        else:
            pending = next((r for r in self.runs if r.job_id is None and not r.finished), None)
            if pending is not None:
                try:
                    pending.start()
                except BackendError as exc:
                    pending.fail(str(exc))
            else:
                front = self.front
                if front is not None:
                    front.tick()
        return self.finished

    def cancel_now(self) -> None:
        """Cancel every unfinished job at once (Blender is ending the operator: no more ticks)."""
        self._cancel_requested = True
        while not self.finished:
            self.tick()

    def _keep(self, index: int, done: Downloaded) -> Any:
        return self.keep_result(index, done)
