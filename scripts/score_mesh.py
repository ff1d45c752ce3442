"""Score a generated mesh against the demo world's ground truth: volumetric IoU and colour.

    .venv/bin/python -m backend generate "a red sphere" --out /tmp/s
    .venv/bin/python scripts/score_mesh.py /tmp/s "a red sphere"

Reads `mesh.npz` from the output folder (or the file given). The IoU is the mesh's inside (ray parity at
the cell centres of an R^3 grid over the scene bound) against the world's exact occupancy, as
`bench_quality.py` measures meshes; colour: mean vertex colour, the world colour nearest to it, and the
mean |vertex colour - true albedo at the nearest true-surface point| (RGB in 0-1). Exit 1 when the IoU is
below --min-iou, the colour is not the prompt's or another world shape fits better (so a script can use
it as a check), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_quality import BOUND, Truth, cell_centres, evaluate_mesh, iou, mesh_inside  # noqa: E402

from backend import demo_world  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", type=Path, help="a generate --out folder, or its mesh.npz")
    parser.add_argument("prompt", help="the world object it should be, e.g. 'a red sphere'")
    parser.add_argument("--eval-res", type=int, default=64, help="grid resolution of the IoU")
    parser.add_argument("--min-iou", type=float, default=0.7, help="exit 1 below this IoU")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)

    path = args.mesh / "mesh.npz" if args.mesh.is_dir() else args.mesh
    try:
        obj = demo_world.parse_prompt(args.prompt)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"error: no mesh at {path} (expected a generate --out folder or a mesh.npz)", file=sys.stderr)
        return 2
    scores = evaluate_mesh(path, Truth(obj, args.eval_res, BOUND), args, BOUND)
    # Every shape of the world is about the same size, so a fair IoU with the wrong shape is common
    # (a sphere scores ~0.7 against the cube): say which shape the mesh matches best.
    # The mesh's inside is computed once; each other shape needs only its occupancy at the same cells.
    with np.load(path) as data:
        inside = mesh_inside(data["vertices"], data["faces"], args.eval_res, BOUND)
    cells = cell_centres(args.eval_res, BOUND)
    by_shape = {obj.shape: scores["mesh_iou"]}
    for shape in demo_world.SHAPES:
        if shape != obj.shape:
            occ = demo_world.occupancy(demo_world.DemoObject(shape, obj.colour), cells)
            by_shape[shape] = iou(inside, occ.reshape((args.eval_res,) * 3).numpy())
    best = max(by_shape, key=lambda k: by_shape[k])
    scores |= {"iou_by_shape": {k: round(v, 4) for k, v in by_shape.items()}, "best_shape": best}
    ok = (
        scores["mesh_iou"] >= args.min_iou and scores["mesh_colour_named"] == obj.colour and best == obj.shape
    )
    if args.json:
        print(json.dumps(scores | {"ok": ok}))
    else:
        rgb = np.round(np.array(scores["mesh_mean_rgb"]) * 255).astype(int).tolist()
        print(
            f"{path}: {obj.prompt}: IoU {scores['mesh_iou']:.3f} ({args.eval_res}^3), "
            f"mean colour sRGB {rgb} -> {scores['mesh_colour_named']}, "
            f"colour error {scores['mesh_colour_error']:.3f}, {scores['n_faces']} faces"
        )
        others = ", ".join(f"{k} {v:.3f}" for k, v in sorted(by_shape.items(), key=lambda kv: -kv[1]))
        print(f"  IoU with each world shape: {others} -> best match: {best}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
