"""Benchmark: what the live mesh costs.

1. Backend: the same generation (demo prior, default settings, CPU) with and without live meshes at the
   default interval (`live_every`), in one run, interleaved (off, on, on, off, ...) so that a machine
   that speeds up or slows down meanwhile weighs on both; the ratio of the medians is the cost (target
   <= 1.10). The "on" runs also serialize each live mesh as the service does (`LiveMesh.npz_bytes`), and
   the two finals must be the same bytes (live meshes change nothing in the run).
2. Add-on (real Blender, the bpy wheel): the time to update the viewport's live object
   (`live_preview.show`: refill the same mesh datablock through `foreach_set`) for 64^3 meshes: the demo
   run's last live mesh and a denser one (a ball filling most of the 64^3 grid); plus reading live.npz.

    .venv/bin/python scripts/bench_live.py [--repeat 2] [--steps N] [--live-every N] [--prompt "a red cube"]
        [--json bench_results/live.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.10
UPDATES = 20


def backend_runs(
    prompt: str, steps: int | None, repeat: int, live_every: int | None = None
) -> tuple[dict[str, Any], Any]:
    import torch

    from backend.config import GenerationConfig
    from backend.engine import live as live_module
    from backend.engine import pipeline
    from backend.engine.pipeline import Progress, generate
    from backend.engine.prior import PriorCache

    cfg = GenerationConfig(prompt=prompt, device="cpu")
    if steps is not None:
        cfg.steps = steps
    if live_every is not None:
        cfg.live_every = live_every
    cfg.validate()
    priors = PriorCache()
    priors.get(None, torch.device("cpu"))  # load the demo prior before timing
    extract_s: list[float] = []
    original = live_module.extract_live_mesh

    def timed_extract(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            extract_s.append(time.perf_counter() - start)

    pipeline.extract_live_mesh = timed_extract  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {"off": [], "on": []}
    finals: dict[str, bytes] = {}
    lives: list[Any] = []
    npz_sizes: list[int] = []
    serialize_s: list[float] = []
    live_total_s: list[float] = []  # per "on" run: seconds spent extracting live meshes
    order = [("off", "on") if i % 2 == 0 else ("on", "off") for i in range(repeat)]
    with tempfile.TemporaryDirectory(prefix="dreamsmith-bench-live-") as tmp:
        # Untimed warm-up: a process's first run is slower (allocator, kernels' first calls).
        warm = dataclasses.replace(cfg, steps=min(cfg.steps, cfg.live_every + 1 if cfg.live_every else 10))
        generate(warm, Path(tmp) / "warm-up", priors=priors, live_meshes=True)
        extract_s.clear()
        for k, pair in enumerate(order):
            for mode in pair:
                on = mode == "on"
                run_lives: list[Any] = []

                def on_progress(p: Progress, on: bool = on, run_lives: list[Any] = run_lives) -> None:
                    if on and p.live_mesh is not None:
                        start = time.perf_counter()
                        data = p.live_mesh.npz_bytes()  # what the service's worker does with it
                        serialize_s.append(time.perf_counter() - start)
                        npz_sizes.append(len(data))
                        run_lives.append(p.live_mesh)

                out = Path(tmp) / f"{k}-{mode}"
                extracted = len(extract_s)
                start = time.perf_counter()
                generate(cfg, out, on_progress=on_progress, priors=priors, live_meshes=on)
                seconds = time.perf_counter() - start
                times[mode].append(seconds)
                finals[mode] = (out / "mesh.npz").read_bytes()
                in_live = sum(extract_s[extracted:])
                if on:
                    lives = run_lives
                    live_total_s.append(in_live)
                print(
                    f"  run {k + 1}/{repeat} live {mode:<3}: {seconds:7.2f} s ({in_live:.2f} s in live meshes)",
                    flush=True,
                )
    pipeline.extract_live_mesh = original  # type: ignore[attr-defined]
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    report = {
        "prompt": prompt,
        "steps": cfg.steps,
        "live_every": cfg.live_every,
        "resolution": live_module.LIVE_RESOLUTION,
        "runs_s": times,
        "median_off_s": off,
        "median_on_s": on,
        "ratio": on / off,
        "live_meshes_per_run": len(lives),
        "extract_median_s": statistics.median(extract_s) if extract_s else None,
        "extract_total_per_run_s": live_total_s,
        # The part of a run its live meshes take, measured inside the run (immune to machine load drift).
        "extract_share": statistics.median(t / r for t, r in zip(live_total_s, times["on"], strict=True))
        if live_total_s
        else None,
        "serialize_median_s": statistics.median(serialize_s) if serialize_s else None,
        "npz_bytes_median": int(statistics.median(npz_sizes)) if npz_sizes else None,
        "last_live_faces": int(len(lives[-1].faces)) if lives else None,
        "last_live_vertices": int(len(lives[-1].vertices)) if lives else None,
        "same_final_mesh": finals.get("off") == finals.get("on"),
        "torch_threads": torch.get_num_threads(),
    }
    return report, (lives[-1] if lives else None)


def dense_live_mesh() -> Any:
    """A 64^3 marching-cubes ball of radius 0.8 with colours: about the most a live mesh holds."""
    from backend.engine.export import marching_cubes_mesh
    from backend.engine.live import LIVE_RESOLUTION, LiveMesh

    axis = np.linspace(-1.0, 1.0, LIVE_RESOLUTION, dtype=np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    bumps = 0.05 * np.sin(9 * x) * np.cos(7 * y)
    grid = 20.0 * (0.8 + bumps - np.sqrt(x * x + y * y + z * z)) + 10.0
    verts, faces = marching_cubes_mesh(grid, 1.0, 10.0)
    colors = np.full((len(verts), 4), 255, np.uint8)
    colors[:, :3] = np.clip((verts * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
    return LiveMesh(step=1, vertices=verts, faces=faces, colors=colors)


def addon_updates(meshes: dict[str, Any]) -> dict[str, Any]:
    import bpy

    from blender_addon import live_preview
    from blender_addon.client import LiveMesh, MeshArrays, read_live_npz

    bpy.ops.wm.read_factory_settings(use_empty=True)
    collection = bpy.context.scene.collection
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dreamsmith-bench-live-") as tmp:
        for label, backend_live in meshes.items():
            path = Path(tmp) / "live.npz"
            path.write_bytes(backend_live.npz_bytes())
            start = time.perf_counter()
            for _ in range(UPDATES):
                live = read_live_npz(path)
            read_s = (time.perf_counter() - start) / UPDATES
            # Two meshes in turn (the same one shifted), so every update really replaces the geometry.
            other = LiveMesh(
                live.step + 1, MeshArrays(live.mesh.vertices * 0.9, live.mesh.faces, live.mesh.colors)
            )
            live_preview.remove()
            start = time.perf_counter()
            obj = live_preview.show(
                collection, live, job_id="bench", object_size=1.0, location=(0, 0, 0), rotation_z=0.0
            )
            first_s = time.perf_counter() - start
            mesh_name = obj.data.name
            n_meshes = len(bpy.data.meshes)
            times = []
            for i in range(UPDATES):
                start = time.perf_counter()
                obj = live_preview.show(
                    collection,
                    other if i % 2 == 0 else live,
                    job_id="bench",
                    object_size=1.0,
                    location=(0, 0, 0),
                    rotation_z=0.0,
                )
                times.append(time.perf_counter() - start)
            assert obj.data.name == mesh_name and len(bpy.data.meshes) == n_meshes, "not updated in place"
            live_preview.remove()
            results[label] = {
                "vertices": int(len(live.mesh.vertices)),
                "faces": int(len(live.mesh.faces)),
                "first_show_s": first_s,
                "update_median_s": statistics.median(times),
                "update_max_s": max(times),
                "read_npz_s": read_s,
            }
    results["blender"] = bpy.app.version_string
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs, with and without (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the config's)")
    parser.add_argument(
        "--live-every", type=int, default=None, help="steps between live meshes (default: the config's)"
    )
    parser.add_argument("--prompt", default="a red cube", help="what to generate (default %(default)r)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench_results" / "live.json", help="result file")
    args = parser.parse_args(argv)

    print("backend: the same generation without and with live meshes (interleaved)")
    backend, last_live = backend_runs(args.prompt, args.steps, args.repeat, args.live_every)
    meshes = {"dense 64^3 ball": dense_live_mesh()}
    if last_live is not None:
        meshes = {"demo run's last live mesh": last_live, **meshes}
    addon = addon_updates(meshes)

    print()
    print(
        f"Live mesh cost, demo prior, {backend['steps']} steps, live_every {backend['live_every']}, "
        f"{backend['resolution']}^3, CPU ({backend['torch_threads']} torch threads), median of {args.repeat}"
    )
    print(f"{'':<34} {'value':>12}")
    rows = [
        ("run without live meshes", f"{backend['median_off_s']:.2f} s"),
        ("run with live meshes", f"{backend['median_on_s']:.2f} s"),
        ("ratio (with / without)", f"{backend['ratio']:.3f}"),
        ("live meshes per run", str(backend["live_meshes_per_run"])),
        ("one live mesh: extraction", f"{1000 * (backend['extract_median_s'] or 0):.0f} ms"),
        ("share of a run in live meshes", f"{100 * (backend['extract_share'] or 0):.1f} %"),
        ("one live mesh: live.npz bytes", f"{1000 * (backend['serialize_median_s'] or 0):.1f} ms"),
        ("live.npz size", f"{(backend['npz_bytes_median'] or 0) / 1024:.0f} KiB"),
        ("same final mesh bytes", str(backend["same_final_mesh"])),
    ]
    for label, value in rows:
        print(f"{label:<34} {value:>12}")
    print()
    print(f"Add-on, Blender {addon['blender']}: updating the live object in place (median of {UPDATES})")
    print(f"{'mesh':<28} {'verts':>7} {'faces':>7} {'update':>9} {'max':>9} {'first':>9} {'read npz':>9}")
    for label, r in addon.items():
        if not isinstance(r, dict):
            continue
        print(
            f"{label:<28} {r['vertices']:>7} {r['faces']:>7} {1000 * r['update_median_s']:>7.1f}ms "
            f"{1000 * r['update_max_s']:>7.1f}ms {1000 * r['first_show_s']:>7.1f}ms {1000 * r['read_npz_s']:>7.1f}ms"
        )
    meets = bool(backend["ratio"] <= TARGET_RATIO and backend["same_final_mesh"])
    print(f"cost target: ratio <= {TARGET_RATIO:.2f}: {'met' if meets else 'NOT met'}")

    report = {
        "benchmark": "live",
        "backend": backend,
        "addon": addon,
        "target_ratio": TARGET_RATIO,
        "meets_target": meets,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if meets else 1


if __name__ == "__main__":
    sys.exit(main())
