"""`scripts/blender_generate.py --batch`: a batch's results in one .blend (a grid, objects named after the
prompts) or one .blend each, in real Blender (the bpy wheel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "blender_generate.py"


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def objects_of(path: Path) -> dict[str, Any]:
    """name -> (location, custom properties) of the mesh objects saved in a .blend."""
    bpy.ops.wm.open_mainfile(filepath=str(path))
    return {
        o.name: (tuple(round(v, 4) for v in o.location), {k: o[k] for k in o.keys()}, len(o.data.polygons))  # noqa: SIM118
        for o in bpy.data.objects
        if o.type == "MESH"
    }


def test_batch_file_to_one_blend_grid_then_one_blend_each(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,seed,model\na red cube,1,\na blue sphere,2,\na green cone,3,\nbroken,4,/no/such/model\n"
    )
    blend = tmp_path / "scene.blend"
    done = run_script(
        "--batch", str(prompts), "--out", str(blend), "--model", str(tiny_pixel_prior),
        "--steps", "2", "--mesh-resolution", "24", "--object-size", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # one item failed; the others are built
    assert "built 3 of 4 items" in done.stdout and "not built: 004-broken (failed: " in done.stderr
    batch_dir = tmp_path / "scene-batch"
    assert json.loads((batch_dir / "batch.json").read_text())["counts"] == {"succeeded": 3, "failed": 1}

    objects = objects_of(blend)
    assert set(objects) == {"a red cube", "a blue sphere", "a green cone"}
    # A 2 x 2 grid, 1.5 object sizes apart, in the file's order from the back left.
    assert objects["a red cube"][0] == (-1.5, 1.5, 0.0)
    assert objects["a blue sphere"][0] == (1.5, 1.5, 0.0)
    assert objects["a green cone"][0] == (-1.5, -1.5, 0.0)
    props = objects["a blue sphere"][1]
    assert props["dreamsmith_prompt"] == "a blue sphere" and props["dreamsmith_seed"] == 2
    assert json.loads(props["dreamsmith_settings"])["steps"] == 2
    assert all(n > 0 for _, _, n in objects.values())
    assert [c.name for c in bpy.data.collections] == ["Dreamsmith Batch"]

    # The finished batch again, one .blend per item (nothing runs: built from its folder).
    each = tmp_path / "each"
    done = run_script("--batch", str(batch_dir / "batch.json"), "--out", str(each), "--each", cwd=tmp_path)
    assert done.returncode == 1 and "running the batch" not in done.stdout
    assert sorted(p.name for p in each.iterdir()) == [
        "001-a_red_cube.blend",
        "002-a_blue_sphere.blend",
        "003-a_green_cone.blend",
    ]
    only = objects_of(each / "002-a_blue_sphere.blend")
    assert list(only) == ["a blue sphere"] and only["a blue sphere"][0] == (0.0, 0.0, 0.0)
