"""Score a generated mesh against the demo world's ground truth: is it the asked object?

    .venv/bin/python -m backend generate "a red sphere" --out /tmp/s
    .venv/bin/python scripts/score_mesh.py /tmp/s "a red sphere"

Reads `mesh.npz` from the output folder (or the file given) and scores it with `backend.evaluation`
(the world benchmark's rule): volumetric IoU with the true object, the world shape that fits it best,
its colour, and its surface error (Chamfer distance, mean normal angle). Exit 0 when it is the asked object
(that shape fits best, that colour, IoU >= --min-iou), 1 when not (so a script can use it as a check),
2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from backend import demo_world  # noqa: E402
from backend.evaluation import metrics  # noqa: E402
from backend.evaluation.truth import Truth  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", type=Path, help="a generate --out folder, or its mesh.npz")
    parser.add_argument("prompt", help="the world object it should be, e.g. 'a red sphere'")
    parser.add_argument("--eval-res", type=int, default=64, help="grid resolution of the IoU")
    parser.add_argument("--min-iou", type=float, default=metrics.MIN_IOU, help="exit 1 below this IoU")
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
    scores = metrics.score_mesh(path, Truth(obj, args.eval_res))
    ok = scores["ok"] and scores["mesh_iou"] >= args.min_iou
    if args.json:
        print(json.dumps(scores | {"ok": ok}))
    else:
        rgb = np.round(np.array(scores["mesh_mean_rgb"]) * 255).astype(int).tolist()
        print(
            f"{path}: {obj.prompt}: IoU {scores['mesh_iou']:.3f} ({args.eval_res}^3), "
            f"mean colour sRGB {rgb} -> {scores['mesh_colour_named']}, "
            f"colour error {scores['mesh_colour_error']:.3f}, {scores['n_faces']} faces"
        )
        print(
            f"  surface error: Chamfer {scores['chamfer']:.4f} (world units), "
            f"normals {scores['normal_deg']:.1f} degrees off the true surface's"
        )
        by_shape = scores["iou_by_shape"]
        others = ", ".join(f"{k} {v:.3f}" for k, v in sorted(by_shape.items(), key=lambda kv: -kv[1]))
        print(f"  IoU with each world shape: {others} -> best match: {scores['best_shape']}")
        print("  -> the asked object" if ok else "  -> NOT the asked object")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
