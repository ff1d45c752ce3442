"""Benchmark: importing a 200k-face coloured mesh through the add-on's fast path vs Blender's glTF importer.

Both import the same mesh in the same run: the add-on from `mesh.npz` (numpy arrays -> `foreach_set`,
colour attribute, material), Blender's importer from the GLB the backend serves for it (written by the
backend's own exporter, `backend.engine.export.glb_bytes`: positions, normals, COLOR_0, material). Each
path runs `--repeat` times on a fresh scene; the table shows the median. Targets: fast path < 0.5 s and >= 5x
faster than the glTF importer.

    .venv/bin/python scripts/bench_import.py [--faces 200000] [--repeat 3] [--json bench_results/import.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 0.5
TARGET_SPEEDUP = 5.0


def blob_mesh(faces_wanted: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed, bumpy sphere (like a marching-cubes result) with smooth vertex colours, in [-0.5, 0.5]^3."""
    rings = int(np.sqrt(faces_wanted / 4))
    segments = 2 * rings
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]  # poles are separate vertices
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    r = 0.45 + 0.04 * np.sin(5 * t) * np.cos(7 * p)
    ring_pts = np.stack([r * np.sin(t) * np.cos(p), r * np.sin(t) * np.sin(p), r * np.cos(t)], -1).reshape(
        -1, 3
    )
    vertices = np.concatenate([[[0, 0, 0.45]], ring_pts, [[0, 0, -0.45]]]).astype(np.float32)
    n_ring = rings - 1
    idx = 1 + np.arange(n_ring * segments).reshape(n_ring, segments)
    nxt = np.roll(idx, -1, axis=1)
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    body = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    top = np.stack([np.zeros(segments, int), idx[0], nxt[0]], -1)
    south = len(vertices) - 1
    bottom = np.stack([np.full(segments, south), nxt[-1], idx[-1]], -1)
    faces = np.concatenate([top, body, bottom]).astype(np.int32)
    rgb = 0.5 + 0.5 * np.stack(
        [np.sin(3 * vertices[:, 0] * 6), np.cos(vertices[:, 1] * 9), vertices[:, 2] * 2], -1
    )
    colors = np.concatenate([np.clip(rgb, 0, 1) * 255, np.full((len(vertices), 1), 255)], -1).astype(np.uint8)
    return vertices, faces, colors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=200_000, help="approximate face count (default 200000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (default 3)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench_results" / "import.json", help="result file"
    )
    args = parser.parse_args(argv)

    import bpy
    import trimesh

    from backend.engine.export import glb_bytes, vertex_normals
    from blender_addon import mesh_build
    from blender_addon.client import read_mesh_npz

    vertices, faces, colors = blob_mesh(args.faces)
    work = Path(tempfile.mkdtemp(prefix="dreamsmith-bench-"))
    npz = work / "mesh.npz"
    np.savez(npz, vertices=vertices, faces=faces, colors=colors)
    glb = work / "mesh.glb"
    glb.write_bytes(glb_bytes(vertices, faces, vertex_normals(vertices, faces), colors=colors))
    # For reference: a leaner GLB without normals (Blender then skips setting custom normals).
    lean_glb = work / "mesh_no_normals.glb"
    lean = trimesh.Trimesh(
        vertices=vertices[:, [0, 2, 1]] * [1, 1, -1], faces=faces, vertex_colors=colors, process=False
    )
    lean_glb.write_bytes(lean.export(file_type="glb", include_normals=False))

    def fresh_scene() -> None:
        bpy.ops.wm.read_factory_settings(use_empty=True)

    def fast_path() -> int:
        arrays = read_mesh_npz(npz)
        obj = mesh_build.create_result_object(bpy.context.scene.collection, arrays, name="bench")
        return len(obj.data.vertices)

    def gltf_import(path: Path) -> int:
        bpy.ops.import_scene.gltf(filepath=str(path))
        return sum(len(o.data.vertices) for o in bpy.context.scene.objects if o.type == "MESH")

    results: dict[str, dict[str, float | int | list[float]]] = {}
    paths = (
        ("add-on fast path (npz)", fast_path),
        ("Blender glTF importer", lambda: gltf_import(glb)),
        ("glTF, no normals (ref.)", lambda: gltf_import(lean_glb)),
    )
    for label, fn in paths:
        times = []
        count = 0
        for _ in range(args.repeat):
            fresh_scene()
            start = time.perf_counter()
            count = fn()
            times.append(time.perf_counter() - start)
        results[label] = {"median_s": statistics.median(times), "runs_s": times, "vertices": count}

    fast = float(results["add-on fast path (npz)"]["median_s"])  # type: ignore[arg-type]
    gltf = float(results["Blender glTF importer"]["median_s"])  # type: ignore[arg-type]
    speedup = gltf / fast
    lean_s = float(results["glTF, no normals (ref.)"]["median_s"])  # type: ignore[arg-type]
    print(f"Import of a {len(faces)}-face, {len(vertices)}-vertex coloured mesh (median of {args.repeat})")
    print(f"{'path':<26} {'seconds':>9} {'vertices':>9} {'vs fast':>8}")
    for label, r in results.items():
        ratio = float(r["median_s"]) / fast  # type: ignore[arg-type]
        print(f"{label:<26} {r['median_s']:>9.3f} {r['vertices']:>9} {ratio:>7.1f}x")
    print(f"speed-up vs the backend's GLB: {speedup:.1f}x (target >= {TARGET_SPEEDUP:g}x)")
    print(f"fast path: {fast:.3f} s (target < {TARGET_SECONDS} s)")

    report = {
        "benchmark": "import",
        "faces": int(len(faces)),
        "vertices": int(len(vertices)),
        "repeat": args.repeat,
        "results": results,
        "speedup": speedup,
        "speedup_vs_glb_without_normals": lean_s / fast,
        "targets": {"fast_path_s": TARGET_SECONDS, "speedup": TARGET_SPEEDUP},
        "meets_targets": bool(fast < TARGET_SECONDS and speedup >= TARGET_SPEEDUP),
        "blender": bpy.app.version_string,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
