"""Benchmark of UV texturing (export.texture = "uv"): decimate + xatlas unwrap + albedo bake, on this CPU.

An analytic field (a bumpy blob with a handle, so genus 1, and smoothly varying colours) stands in for a
trained NeRF. Its marching-cubes mesh is decimated to the default 50k faces, unwrapped and baked into a
1024^2 texture; the texture is then compared with the field at random surface points (bilinear lookup).
The baseline, measured in the same run, is xatlas with its default chart options (unbounded charts).

    .venv/bin/python scripts/bench_texture.py [--faces 50000] [--size 1024] [--resolution 192]
        [--no-baseline] [--out bench_results/texture.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.engine import export as ex  # noqa: E402
from backend.engine import texture as tx  # noqa: E402
from backend.fileio import write_json_atomic  # noqa: E402


class BumpyHandleField:
    """Density 50 inside a bumpy ball of radius ~0.45 joined to a torus handle; colour bands in x, y, z."""

    bound = 1.0

    def density(self, x: torch.Tensor) -> torch.Tensor:  # [N,3] -> [N]
        r = x.norm(dim=-1)
        bumps = 0.04 * torch.sin(7 * x[:, 0]) * torch.sin(7 * x[:, 1]) * torch.sin(7 * x[:, 2])
        ball = r - (0.45 + bumps)
        # Torus in the x-z plane centred at (0.45, 0, 0.2): a handle on the ball's side.
        q = torch.stack([torch.hypot(x[:, 0] - 0.45, x[:, 2] - 0.2) - 0.25, x[:, 1]], dim=-1)
        handle = q.norm(dim=-1) - 0.07
        distance = torch.minimum(ball, handle)
        return 50.0 * torch.sigmoid(-distance / 0.01)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:  # [N,3] -> [N,3]
        return torch.stack(
            [
                0.5 + 0.4 * torch.sin(5 * x[:, 0] + 1.0),
                0.5 + 0.4 * torch.sin(4 * x[:, 1] - 0.5),
                0.5 + 0.4 * torch.cos(6 * x[:, 2]),
            ],
            dim=-1,
        )


def colour_error(
    field: BumpyHandleField, verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray, image: np.ndarray, n: int
) -> dict[str, float]:
    """Texture vs field at `n` points uniform on the surface, in 0..255 units (mean abs, p99, max)."""
    rng = np.random.default_rng(0)
    tri = verts[faces].astype(np.float64)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f = rng.choice(len(faces), n, p=area / area.sum())
    w = rng.dirichlet(np.ones(3), n)
    points = np.einsum("kc,kcd->kd", w, verts[faces[f]])
    uv = np.einsum("kc,kcd->kd", w, uvs[faces[f]])
    truth = ex.sample_albedo(field, points) * 255.0
    err = np.abs(tx.sample_texture(image, uv) - truth).max(axis=1)
    return {"mean": float(err.mean()), "p99": float(np.percentile(err, 99)), "max": float(err.max())}


def run(
    name: str, field, verts, faces, size: int, target: int, boundary: float | None, samples: int
) -> dict[str, object]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    dv, df = ex.decimate(verts, faces, target)
    t1 = time.perf_counter()
    vertex_map, uv_faces, uvs = tx.unwrap(dv, df, size, boundary_fraction=boundary)
    t2 = time.perf_counter()
    split = dv[vertex_map]
    image = tx.bake_texture(lambda p: ex.sample_albedo(field, p), split, uv_faces, uvs, size)
    t3 = time.perf_counter()
    cpu_s = time.process_time() - c0
    face_index, _ = tx.rasterize(uvs, uv_faces, size)
    return {
        "options": name,
        "faces_in": int(len(faces)),
        "faces": int(len(df)),
        "split_vertices": int(len(split)),
        "decimate_s": t1 - t0,
        "unwrap_s": t2 - t1,
        "bake_s": t3 - t2,
        "total_s": t3 - t0,
        "total_cpu_s": cpu_s,
        "texels_baked": float((face_index >= 0).mean()),
        "colour_error": colour_error(field, split, uv_faces, uvs, image, samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=50000, help="decimation target (default 50000)")
    parser.add_argument("--size", type=int, default=1024, help="texture size (default 1024)")
    parser.add_argument("--resolution", type=int, default=192, help="marching-cubes grid (default 192)")
    parser.add_argument("--samples", type=int, default=200000, help="surface points for the colour error")
    parser.add_argument("--no-baseline", action="store_true", help="skip xatlas's default chart options")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "texture.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    field = BumpyHandleField()
    t = time.perf_counter()
    grid = ex.density_grid(field, args.resolution)
    verts, faces = ex.marching_cubes_mesh(grid, field.bound, None)
    mesh_s = time.perf_counter() - t

    variants: list[tuple[str, float | None]] = [
        (f"dreamsmith (boundary {tx.CHART_BOUNDARY_FRACTION} sqrt(area))", tx.CHART_BOUNDARY_FRACTION)
    ]
    if not args.no_baseline:
        variants.append(("xatlas defaults (baseline)", None))
    rows = [run(n, field, verts, faces, args.size, args.faces, b, args.samples) for n, b in variants]

    print(
        f"mesh: {len(faces)} faces from a {args.resolution}^3 grid in {mesh_s:.1f} s; texture {args.size}^2"
    )
    print(
        "s = wall-clock seconds, cpu s = this process's CPU time (all threads), texels = share of the texture"
    )
    print("baked, err = |texture - field| at points uniform on the surface in 0..255 units (mean, 99th pct)")
    header = f"{'options':44s} {'faces':>6s} {'decim s':>7s} {'unwrap s':>8s} {'bake s':>6s} {'total s':>7s}"
    print(header + f" {'cpu s':>6s} {'texels':>6s} {'err mean':>8s} {'err p99':>7s}")
    for r in rows:
        e = r["colour_error"]
        assert isinstance(e, dict)
        print(
            f"{r['options']:44s} {r['faces']:6d} {r['decimate_s']:7.2f} {r['unwrap_s']:8.2f} {r['bake_s']:6.2f}"
            f" {r['total_s']:7.2f} {r['total_cpu_s']:6.2f} {r['texels_baked']:6.1%} {e['mean']:8.2f} {e['p99']:7.2f}"
        )
    if len(rows) == 2:
        print(f"speed-up over the baseline: {float(rows[1]['total_s']) / float(rows[0]['total_s']):.1f}x")
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "torch_threads": torch.get_num_threads(),
        },
        "resolution": args.resolution,
        "texture_size": args.size,
        "target_faces": args.faces,
        "mesh_s": mesh_s,
        "runs": rows,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
