"""Batch throughput and fault tolerance: N items with the tiny model, plain and on a local Ray cluster.

    python scripts/bench_batch.py [--items 8] [--steps 60] [--workers 2]

Three runs of the same batch file (a fresh output folder each, a fresh prior cache: model loading counts):
  plain        `run_batch`: the items one after another in this process (torch's threads as OMP_NUM_THREADS
               or its default say; printed)
  ray          `run_batch_ray` on a local cluster of `--workers` CPU workers started for the run (its start
               counts), one CPU per item
  ray + kill   the same, and the worker process running the first item to report a step is killed with
               SIGKILL; Ray starts that item again on a worker; an item not succeeded at the end is lost

Prints a table and writes bench_results/bench_batch.json. Items lost must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = [
    "a red cube",
    "a blue sphere",
    "a green cone",
    "a yellow torus",
    "a purple cylinder",
    "an orange house",
]


def write_file(folder: Path, n: int) -> Path:
    path = folder / "prompts.jsonl"
    lines = [{"prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def summarize(name: str, report: Any, seconds: float, killed: list[int]) -> dict[str, Any]:
    items = report.items
    return {
        "run": name,
        "wall_s": round(seconds, 2),
        "items": len(items),
        "succeeded": sum(r["state"] == "succeeded" for r in items),
        "lost": sum(r["state"] != "succeeded" for r in items),
        "attempts": sum(r["attempts"] for r in items),
        "killed_worker_pids": killed,
        "item_s_mean": round(sum(r["seconds"] or 0.0 for r in items) / max(1, len(items)), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench_batch.json")
    args = parser.parse_args()

    import torch

    from backend.batch import Batch, ItemEvent, read_batch_file, run_batch
    from backend.batch_ray import run_batch_ray
    from backend.engine.prior import PriorCache
    from backend.engine.tiny_prior import make_tiny_prior

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        model = make_tiny_prior(work / "tiny", pixel=True, seed=0)
        settings = {
            "model": str(model),
            "steps": args.steps,
            "render_size": 32,
            "samples_per_ray": 24,
            "preview_every": 0,
            "export.mesh_resolution": 48,
            "export.target_faces": 5000,
        }
        items = read_batch_file(write_file(work, args.items), settings)

        t0 = time.perf_counter()
        report = run_batch(Batch(items, work / "plain"), priors=PriorCache())
        rows.append(summarize("plain", report, time.perf_counter() - t0, []))
        print(f"plain: {rows[-1]['wall_s']} s (torch threads {torch.get_num_threads()})", flush=True)

        t0 = time.perf_counter()
        report = run_batch_ray(Batch(items, work / "ray"), workers=args.workers)
        rows.append(summarize(f"ray ({args.workers} workers)", report, time.perf_counter() - t0, []))
        print(f"ray: {rows[-1]['wall_s']} s", flush=True)

        killed: list[int] = []
        started: dict[str, int] = {}

        def kill_one(event: ItemEvent) -> None:
            if event.kind == "started" and event.pid is not None:
                started[event.name] = event.pid
            elif event.kind == "step" and not killed and event.name in started:
                os.kill(started[event.name], signal.SIGKILL)
                killed.append(started[event.name])
                print(f"killed worker {killed[0]} while it ran {event.name} (step {event.step})", flush=True)

        t0 = time.perf_counter()
        report = run_batch_ray(Batch(items, work / "ray-kill"), workers=args.workers, on_event=kill_one)
        rows.append(
            summarize(f"ray ({args.workers} workers), 1 killed", report, time.perf_counter() - t0, killed)
        )

    header = ("run", "wall s", "items", "succeeded", "lost", "attempts", "mean item s")
    table = [header] + [
        (r["run"], f"{r['wall_s']:.1f}", str(r["items"]), str(r["succeeded"]), str(r["lost"]), str(r["attempts"]),
         f"{r['item_s_mean']:.1f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    result = {
        "items": args.items,
        "steps": args.steps,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "model": "tiny random pixel-space diffusers model (engine/tiny_prior.py)",
        "torch_threads_plain": torch.get_num_threads(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other work on the machine skews times
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
