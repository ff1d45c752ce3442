"""Batches across machines: each item a Ray task (`python -m backend batch FILE --ray [ADDRESS]`).

Ray is optional (`pip install 'dreamsmith[ray]'`) and imported only here, only when asked for.

- The cluster: ADDRESS (`auto`, `HOST:6379` from a node of the cluster, `ray://HOST:10001` from outside),
  or a local cluster started for the run (`workers` CPUs) and stopped at its end.
- Each item is one task that asks for one GPU, or `cpus_per_item` CPUs when the cluster has no GPU. The
  driver ships this `backend` package to the workers (Ray's `py_modules`), so they run the driver's code;
  the nodes need its dependencies (torch, diffusers, ...) and any local model folder at the same path.
- A task runs `batch.run_item` into a temporary folder on its worker and returns the files' bytes; the
  driver writes them into DIR/<item>/ and records the item exactly as `batch.run_batch` does, so DIR
  looks the same with or without Ray, whatever the nodes' file systems. A failing item returns a failed
  outcome (it fails alone, no retry); a task whose worker process dies (killed, out of memory, node lost)
  is started again by Ray elsewhere, up to `retries` times (Ray's task retries).
- Each worker process keeps one prior cache for the tasks it runs. Progress (started, step, phase) goes to
  a small actor that the driver polls twice a second for the progress bars.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backend.batch import (
    Batch,
    BatchItem,
    BatchLock,
    BatchReport,
    EventSink,
    ItemEvent,
    Outcome,
    clear_results,
    run_item,
    worker_id,
)
from backend.errors import DreamsmithError
from backend.fileio import write_bytes_atomic

POLL_S = 0.5
RAY_PIN = "ray==2.60.0"


class RayMissing(DreamsmithError):
    def __init__(self) -> None:
        super().__init__(
            f"--ray needs Ray, which is not installed: pip install 'dreamsmith[ray]' (or pip install {RAY_PIN})"
        )


def import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayMissing() from exc


# ---- on the workers ---------------------------------------------------------------------------------------

_PRIORS: Any = None  # one prior cache per worker process, kept between the tasks it runs


def _worker_priors() -> Any:
    global _PRIORS
    if _PRIORS is None:
        from backend.engine.prior import PriorCache

        _PRIORS = PriorCache()
    return _PRIORS


def execute_item(name: str, config: dict[str, Any], board: Any) -> dict[str, Any]:
    """The Ray task: one item into a temporary folder; its outcome and files' bytes go back to the driver."""
    import torch

    from backend.config import config_from_dict

    ray = import_ray()
    me, pid = worker_id(), os.getpid()
    board.started.remote(name, me, pid)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    last = [0.0]

    def on_progress(p: Any) -> None:
        now = time.monotonic()
        if p.phase != "optimizing" or p.step == p.steps or now - last[0] >= 0.25:
            last[0] = now
            board.progress.remote(name, p.phase, p.step, p.steps)

    with tempfile.TemporaryDirectory(prefix="dreamsmith-item-") as tmp:
        outcome = run_item(
            config_from_dict(config), Path(tmp), priors=_worker_priors(), on_progress=on_progress
        )
        files = {f: (Path(tmp) / f).read_bytes() for f in outcome.files}
    return {"outcome": asdict(outcome), "files": files, "worker": me}


class ProgressBoard:
    """A Ray actor (no CPU): what each item's current run reports; the driver polls `snapshot`."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def started(self, name: str, worker: str, pid: int) -> None:
        entry = self.items.setdefault(name, {"attempts": 0})
        entry.update(attempts=entry["attempts"] + 1, worker=worker, pid=pid, phase="loading model", step=0)

    def progress(self, name: str, phase: str, step: int, steps: int) -> None:
        entry = self.items.setdefault(name, {"attempts": 1, "worker": "", "pid": None})
        entry.update(phase=phase, step=step, steps=steps)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.items


# ---- the driver -------------------------------------------------------------------------------------------


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT or ray://HOST:PORT address must answer a TCP connect: Ray itself would keep trying for
    minutes before saying so."""
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray checks itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise DreamsmithError(
            f"could not start or reach the Ray cluster at {address}: nothing answers there "
            f"({exc.strerror or exc}); is `ray start --head` running on that machine, and the port open?"
        ) from exc


def _connect(ray: Any, address: str | None, workers: int | None) -> None:
    import backend

    if address is not None:
        _check_reachable(address)

    runtime_env = {
        "py_modules": [str(Path(backend.__file__).resolve().parent)],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {"OMP_WAIT_POLICY": "PASSIVE"},
    }
    kw: dict[str, Any] = {
        "runtime_env": runtime_env,
        "log_to_driver": False,  # the workers' output would tear the progress bars; errors come back
        "logging_level": logging.WARNING,
    }
    try:
        if address is None:
            ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise DreamsmithError(f"could not start or reach {where}: {exc}") from exc


def _failure(ray: Any, exc: BaseException, attempts: int) -> str:
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return (
            f"the Ray task failed on its worker ({type(cause).__name__}: {str(cause).splitlines()[0][:300]}); "
            "does every node have dreamsmith's dependencies?"
        )
    return (
        f"its Ray worker died {attempts} time{'s' if attempts != 1 else ''} "
        f"({type(exc).__name__}), so the item was given up"
    )


def run_batch_ray(
    batch: Batch,
    address: str | None = None,
    *,
    retry_failed: bool = False,
    workers: int | None = None,
    retries: int = 3,
    cpus_per_item: float = 1.0,
    on_event: EventSink | None = None,
) -> BatchReport:
    """Run the batch's items as Ray tasks (see the module's docstring); returns when every one is done."""
    ray = import_ray()
    batch.check_output()
    with BatchLock(batch.out_dir):
        todo = batch.plan(retry_failed)
        if not todo:
            return batch.write_summary()
        _connect(ray, address, workers)
        try:
            return _drive(ray, batch, todo, retries, cpus_per_item, on_event)
        finally:
            ray.shutdown()


def _drive(
    ray: Any,
    batch: Batch,
    todo: list[BatchItem],
    retries: int,
    cpus_per_item: float,
    on_event: EventSink | None,
) -> BatchReport:
    cluster = ray.cluster_resources()
    resources: dict[str, Any] = {"num_gpus": 1} if cluster.get("GPU", 0) >= 1 else {"num_cpus": cpus_per_item}
    if "num_cpus" in resources and cluster.get("CPU", 0) < cpus_per_item:
        # Ray would wait forever for a task no node can take.
        raise DreamsmithError(
            f"--ray-cpus {cpus_per_item:g}: the cluster has no GPU and only {cluster.get('CPU', 0):g} CPUs"
        )
    task = ray.remote(max_retries=retries, **resources)(execute_item)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    pending: dict[Any, BatchItem] = {}
    for item in todo:
        batch.begin(item)
        pending[task.remote(item.name, item.config.to_dict(), board)] = item
    seen: dict[str, dict[str, Any]] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            snapshot: dict[str, dict[str, Any]] = ray.get(board.snapshot.remote())
            _emit_progress(snapshot, seen, on_event)
            for ref in ready:
                item = pending.pop(ref)
                info = snapshot.get(item.name, {})
                attempts = int(info.get("attempts", 1)) or 1
                outcome, worker = _collect(ray, batch, item, ref, attempts)
                record = batch.finish(
                    item, outcome, attempts=attempts, worker=worker or info.get("worker", "")
                )
                if on_event is not None:
                    on_event(ItemEvent(item.name, "finished", steps=item.config.steps, record=record))
    except KeyboardInterrupt:
        for ref, item in pending.items():
            ray.cancel(ref, force=True)
            batch.interrupt(item)
        raise
    return batch.write_summary()


def _emit_progress(
    snapshot: dict[str, dict[str, Any]], seen: dict[str, dict[str, Any]], on_event: EventSink | None
) -> None:
    for name, info in snapshot.items():
        before = seen.get(name, {})
        if on_event is not None:
            if info.get("attempts") != before.get("attempts"):
                on_event(
                    ItemEvent(
                        name,
                        "started",
                        worker=info.get("worker", ""),
                        pid=info.get("pid"),
                        attempt=int(info.get("attempts", 1)),
                    )
                )
            if info.get("phase") == "optimizing" and info.get("step") != before.get("step"):
                on_event(
                    ItemEvent(
                        name, "step", step=info["step"], steps=info.get("steps", 0), pid=info.get("pid")
                    )
                )
            elif info.get("phase") != before.get("phase") and info.get("phase") not in ("optimizing", "done"):
                on_event(ItemEvent(name, "phase", phase=info.get("phase", ""), pid=info.get("pid")))
        seen[name] = dict(info)


def _collect(ray: Any, batch: Batch, item: BatchItem, ref: Any, attempts: int) -> tuple[Outcome, str]:
    """The finished task's outcome, its files written into the item's folder."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return Outcome("failed", 0.0, error=_failure(ray, exc, attempts)), ""
    outcome = Outcome(**result["outcome"])
    folder = batch.folder(item)
    try:
        for name, data in result["files"].items():
            write_bytes_atomic(folder / name, data)
    except OSError as exc:
        clear_results(folder)
        return Outcome(
            "failed", outcome.seconds, error=f"could not write {folder}: {exc.strerror or exc}"
        ), ""
    return outcome, str(result.get("worker", ""))
