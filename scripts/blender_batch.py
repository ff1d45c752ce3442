"""`blender_generate.py --batch FILE`: a batch's results built into one .blend (a grid) or one .blend each.

FILE is either a batch file (.csv, .jsonl, .txt: `python -m backend batch` runs it first, into
`--batch-dir`, default `<out>-batch/` beside the output; resumable like the command itself) or a finished
batch: its folder or its `batch.json` (built as it is, e.g. after a run on a Ray cluster).

One .blend (default): every succeeded item as an object named after its prompt, in a grid on the ground
plane (rows of ceil(sqrt(N)), `--object-size` each, 1.5 sizes apart, in the file's order from the back
left), in a collection "Dreamsmith Batch". `--each`: OUT is a folder and each item gets OUT/<item>.blend
with its object at the origin. Objects carry the prompt and settings as custom properties, as the
add-on's imports do. Items that failed are listed and left out; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "batch.json"
SPACING = 1.5  # grid pitch, in object sizes


def batch_dir_for(args: argparse.Namespace) -> Path:
    if args.batch_dir is not None:
        return Path(args.batch_dir).resolve()
    out = Path(args.out).resolve()
    return out.with_name(out.stem + "-batch") if not args.each else out / "batch"


def is_finished_batch(path: Path) -> bool:
    return (path.is_dir() and (path / SUMMARY).is_file()) or path.name == SUMMARY


def backend_python(args: argparse.Namespace) -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return args.backend_python or (str(venv_python) if venv_python.exists() else sys.executable)


def batch_command(args: argparse.Namespace, batch_dir: Path) -> list[str]:
    """`python -m backend batch FILE --out DIR` with this script's generation options that were given."""
    command = [
        backend_python(args),
        "-m",
        "backend",
        "batch",
        str(Path(args.batch).resolve()),
        "--out",
        str(batch_dir),
    ]
    options = {
        "--steps": args.steps,
        "--seed": args.seed,
        "--render-size": args.render_size,
        "--mesh-resolution": args.mesh_resolution,
        "--texture": args.texture,
        "--method": args.method,
        "--model": args.model or None,
        "--negative-prompt": args.negative_prompt or None,
    }
    for flag, value in options.items():
        if value is not None:
            command += [flag, str(value)]
    if args.retry_failed:
        command.append("--retry-failed")
    if args.ray is not None:
        command += ["--ray", args.ray] if args.ray else ["--ray"]
    return command


def run_batch(args: argparse.Namespace, batch_dir: Path) -> int:
    command = batch_command(args, batch_dir)
    print(f"[dreamsmith] running the batch: {' '.join(command)}", flush=True)
    try:
        return subprocess.call(command, cwd=ROOT)
    except OSError as exc:
        print(
            f"[dreamsmith] error: could not run {command[0]!r} ({exc.strerror or exc}); pass --backend-python "
            "with the Python that has the backend's packages",
            file=sys.stderr,
        )
        return 2


def read_summary(batch_dir: Path) -> list[dict[str, Any]]:
    data = json.loads((batch_dir / SUMMARY).read_text(encoding="utf-8"))
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{batch_dir / SUMMARY} is not a Dreamsmith batch summary")
    return [r for r in items if isinstance(r, dict)]


def item_properties(batch_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """What an imported object records: the prompt and the item's settings (its item.json)."""
    props: dict[str, Any] = {"dreamsmith_prompt": row.get("prompt", ""), "dreamsmith_batch_item": row["name"]}
    try:
        record = json.loads((batch_dir / row["name"] / "item.json").read_text(encoding="utf-8"))
        config = record["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return props
    props |= {
        "dreamsmith_method": config.get("method", ""),
        "dreamsmith_seed": int(config.get("seed", 0)),
        "dreamsmith_model": config.get("model") or "",
        "dreamsmith_settings": json.dumps(config, sort_keys=True),
    }
    return props


def build_object(
    bpy: Any, batch_dir: Path, row: dict[str, Any], collection: Any, location: Any, size: float
) -> Any:
    from blender_addon import mesh_build
    from blender_addon.client import read_mesh_npz

    folder = batch_dir / row["name"]
    texture = folder / "texture.png"
    return mesh_build.create_result_object(
        collection,
        read_mesh_npz(folder / "mesh.npz"),
        name=mesh_build.object_name(str(row.get("prompt") or row["name"])),
        object_size=size,
        location=location,
        texture_path=texture if texture.is_file() else None,
        properties=item_properties(batch_dir, row),
    )


def grid_locations(n: int, pitch: float) -> list[tuple[float, float, float]]:
    """N places on the ground plane, row by row from the back left, centred on the origin."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    return [
        ((i % cols - (cols - 1) / 2) * pitch, ((rows - 1) / 2 - i // cols) * pitch, 0.0) for i in range(n)
    ]


def save(bpy: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups beside the results
    bpy.ops.wm.save_as_mainfile(filepath=str(path), check_existing=False)


def build(
    bpy: Any, batch_dir: Path, rows: list[dict[str, Any]], out: Path, each: bool, size: float
) -> list[Path]:
    """Write the .blend file(s); the paths written."""
    done = [r for r in rows if r.get("state") == "succeeded"]
    written: list[Path] = []
    if each:
        for row in done:
            bpy.ops.wm.read_factory_settings(use_empty=True)
            build_object(bpy, batch_dir, row, bpy.context.scene.collection, (0.0, 0.0, 0.0), size)
            path = out / f"{row['name']}.blend"
            save(bpy, path)
            written.append(path)
        return written
    if not done:
        return written
    bpy.ops.wm.read_factory_settings(use_empty=True)
    collection = bpy.data.collections.new("Dreamsmith Batch")
    bpy.context.scene.collection.children.link(collection)
    for row, location in zip(done, grid_locations(len(done), size * SPACING), strict=True):
        build_object(bpy, batch_dir, row, collection, location, size)
    save(bpy, out)
    return [out]


def main_batch(args: argparse.Namespace, bpy: Any) -> int:
    source = Path(args.batch).resolve()
    if is_finished_batch(source):
        batch_dir = source if source.is_dir() else source.parent
    else:
        batch_dir = batch_dir_for(args)
        rc = run_batch(args, batch_dir)
        if rc not in (0, 1):  # 1: some items failed; the others are built
            print(f"[dreamsmith] error: the batch did not run (exit {rc}); see above", file=sys.stderr)
            return 1
    try:
        rows = read_summary(batch_dir)
    except (OSError, ValueError) as exc:
        print(f"[dreamsmith] error: no batch results in {batch_dir} ({exc})", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    written = build(bpy, batch_dir, rows, out, args.each, args.object_size)
    failed = [r for r in rows if r.get("state") != "succeeded"]
    for path in written:
        print(f"[dreamsmith] wrote {path}")
    built = len(rows) - len(failed)
    print(f"[dreamsmith] built {built} of {len(rows)} items from {batch_dir}")
    for row in failed:
        print(
            f"[dreamsmith]   not built: {row['name']} ({row.get('state')}: {row.get('error')})",
            file=sys.stderr,
        )
    return 0 if not failed else 1
