"""Benchmark the HTTP service: status-poll latency while a job runs, and the service's overhead over the engine.

    python scripts/bench_service.py [--model DIR] [--steps 6] [--repeats 4] [--out bench_results/service.json]

1. Overhead: the same generation run by `backend.engine.pipeline.generate` in this process (baseline)
   and through the service (`python -m backend serve` in a subprocess, polled twice a second like the
   add-on), interleaved bare/service (alternating order) `--repeats` times after a warm-up of each; medians
   compared.
   Service time is the server's own created_at -> finished_at (queue wait included).
2. Poll latency: GET /v1/jobs/{id} on a keep-alive connection, first with the service idle (baseline),
   then while a long job runs; p50/p90/p99/max. Then the time a cancel takes to land.

The tiny random model (scripts/make_tiny_prior.py) is used unless --model is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The service sets this before torch loads (backend/service/server.py); the baseline must run the same way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402

from backend.service.server import free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_stats(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


class ServiceProcess:
    """`python -m backend serve` on a free loopback port with its own data directory."""

    def __init__(self, data_dir: Path, device: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data_dir / "service.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "backend", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(data_dir / "service"), "--device", device]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DREAMSMITH_TOKEN", None)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.client.get("/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {self.log.name}")
            time.sleep(0.1)

    def submit(self, request: dict[str, Any]) -> str:
        r = self.client.post("/v1/jobs", json=request)
        r.raise_for_status()
        return r.json()["id"]

    def wait(
        self, job_id: str, poll_s: float = 0.5, until: tuple[str, ...] = ("succeeded", "failed", "cancelled")
    ):
        while True:
            status = self.client.get(f"/v1/jobs/{job_id}").json()
            if status["state"] in until:
                return status
            time.sleep(poll_s)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def poll_latencies(
    client: httpx.Client, path: str, n: int, interval_s: float
) -> tuple[list[float], list[dict]]:
    """Seconds per GET and the statuses seen."""
    samples, statuses = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        samples.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        statuses.append(r.json())
        time.sleep(interval_s)
    return samples, statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers folder or hub id (default: a tiny random model)")
    parser.add_argument("--steps", type=int, default=6, help="steps of the timed job")
    parser.add_argument("--render-size", type=int, default=16)
    parser.add_argument("--mesh-resolution", type=int, default=16)
    parser.add_argument("--preview-every", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4, help="bare/service pairs (medians are compared)")
    parser.add_argument("--polls", type=int, default=400, help="status polls per latency measurement")
    parser.add_argument("--poll-interval", type=float, default=0.02, help="seconds between polls")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "service.json")
    args = parser.parse_args(argv)

    import torch

    from backend.config import config_from_dict
    from backend.engine.pipeline import generate
    from backend.engine.prior import PriorCache

    work = Path(tempfile.mkdtemp(prefix="dreamsmith-bench-"))
    model = args.model
    if model is None:
        from backend.engine.tiny_prior import make_tiny_prior

        model = str(make_tiny_prior(work / "tiny", pixel=False, seed=0))
    request = {
        "prompt": "a red cube",
        "model": model,
        "steps": args.steps,
        "render_size": args.render_size,
        "preview_every": args.preview_every,
        "export": {"mesh_resolution": args.mesh_resolution},
    }
    cfg = dataclasses.replace(config_from_dict(request), device=args.device)
    warmup = {**request, "steps": 3}
    priors = PriorCache()

    def bare() -> float:
        # On a fresh thread, as the service runs jobs on its worker thread, so only the service differs.
        out = Path(tempfile.mkdtemp(dir=work))
        seconds: list[float] = []

        def run() -> None:
            t0 = time.perf_counter()
            generate(cfg, out, priors=priors)
            seconds.append(time.perf_counter() - t0)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert seconds, "the bare engine run failed"
        return seconds[0]

    service = ServiceProcess(work, args.device)
    try:
        generate(dataclasses.replace(cfg, steps=3), Path(tempfile.mkdtemp(dir=work)), priors=priors)
        assert service.wait(service.submit(warmup))["state"] == "succeeded"
        bare_s, service_s, client_s = [], [], []

        def through_service() -> None:
            t0 = time.perf_counter()
            status = service.wait(service.submit(request))
            client_s.append(time.perf_counter() - t0)
            assert status["state"] == "succeeded", status
            service_s.append(status["finished_at"] - status["created_at"])

        for i in range(args.repeats):
            # Alternate the order (ABBA...) so drift in the machine's load does not favour one side.
            if i % 2 == 0:
                bare_s.append(bare())
                through_service()
            else:
                through_service()
                bare_s.append(bare())
            print(f"  run {i + 1}: bare {bare_s[-1]:.2f} s, service {service_s[-1]:.2f} s", flush=True)

        idle_job = service.submit({**request, "steps": 3})
        service.wait(idle_job)
        idle, _ = poll_latencies(service.client, f"/v1/jobs/{idle_job}", args.polls, args.poll_interval)
        long_job = service.submit({**request, "steps": 20000})
        service.wait(long_job, poll_s=0.05, until=("running",))
        while service.client.get(f"/v1/jobs/{long_job}").json()["step"] < 1:
            time.sleep(0.05)
        busy, seen = poll_latencies(service.client, f"/v1/jobs/{long_job}", args.polls, args.poll_interval)
        t0 = time.perf_counter()
        service.client.post(f"/v1/jobs/{long_job}/cancel")
        cancelled = service.wait(long_job, poll_s=0.005)
        cancel_s = time.perf_counter() - t0
        assert cancelled["state"] == "cancelled", cancelled
        steps_seen = seen[-1]["step"] - seen[0]["step"]
        step_s = (seen[-1]["elapsed_s"] - seen[0]["elapsed_s"]) / steps_seen if steps_seen else float("nan")
    finally:
        service.close()

    bare_med, service_med = statistics.median(bare_s), statistics.median(service_s)
    overhead = (service_med - bare_med) / bare_med * 100
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": args.device,
        },
        "job": {k: v for k, v in request.items() if k != "prompt"} | {"model": args.model or "tiny random"},
        "overhead": {
            "bare_s": [round(x, 3) for x in bare_s],
            "service_s": [round(x, 3) for x in service_s],
            "service_client_observed_s": [round(x, 3) for x in client_s],
            "bare_median_s": round(bare_med, 3),
            "service_median_s": round(service_med, 3),
            "overhead_pct": round(overhead, 2),
            "target_pct": 5.0,
        },
        "poll_latency": {
            "idle": latency_stats(idle),
            "while_running": latency_stats(busy),
            "target_p99_ms": 50,
        },
        "cancel": {"seconds": round(cancel_s, 3), "mean_step_s": round(step_s, 3)},
    }

    rows = [
        ("engine alone, median", f"{bare_med:.2f} s", ""),
        ("through the service, median", f"{service_med:.2f} s", ""),
        ("service overhead", f"{overhead:+.1f} %", "target <= 5 %"),
        (
            "poll p50 / p99, idle",
            "{p50_ms:.1f} / {p99_ms:.1f} ms".format(**results["poll_latency"]["idle"]),
            "",
        ),
        (
            "poll p50 / p99, job running",
            "{p50_ms:.1f} / {p99_ms:.1f} ms".format(**results["poll_latency"]["while_running"]),
            "target p99 < 50 ms",
        ),
        ("cancel lands after", f"{cancel_s * 1000:.0f} ms", f"one step ~ {step_s * 1000:.0f} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nservice benchmark ({args.steps} steps, render {args.render_size}, {args.device})")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>16}  {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
