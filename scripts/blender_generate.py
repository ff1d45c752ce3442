"""Generate an object from a prompt without Blender's UI and save it as a .blend (and GLB / PNG render).

Works both ways:

    blender --background --python scripts/blender_generate.py -- --prompt "a red cube" --out scene.blend
    .venv/bin/python scripts/blender_generate.py --prompt "a red cube" --out scene.blend   # bpy wheel

It registers the add-on from `blender_addon/` in this repository, uses the backend at --url, or, when
nothing answers there, starts one itself (`.venv/bin/python -m backend serve` on a free port, jobs in a
temporary folder) and stops it afterwards. `--glb` exports the imported object with Blender's own glTF
exporter (so the GLB matches the .blend: size, placement and material); `--render` makes a small Cycles
CPU render with a camera and a light.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("tp-sds", "asd", "tp-asd", "sds")


def script_args(argv: list[str]) -> list[str]:
    """Arguments meant for this script: after `--` (Blender's convention) or after the script name."""
    if "--" in argv:
        return argv[argv.index("--") + 1 :]
    return argv[1:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blender_generate.py",
        description="Generate a 3D object from a prompt with the Dreamsmith backend and save it.",
    )
    p.add_argument("--prompt", required=True, help='what to make, e.g. "a red cube"')
    p.add_argument("--out", type=Path, required=True, help="the .blend file to write")
    p.add_argument("--negative-prompt", default="", help="what to steer away from")
    p.add_argument(
        "--model", default="", help="diffusers folder or hub id on the backend (default: demo prior)"
    )
    p.add_argument("--method", default="tp-sds", choices=METHODS, help="score distillation method")
    p.add_argument("--steps", type=int, default=None, help="optimization steps (default: the add-on's)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--render-size", type=int, default=None, help="training render size in pixels")
    p.add_argument("--mesh-resolution", type=int, default=None, help="marching-cubes resolution")
    p.add_argument(
        "--texture", default="vertex", choices=("vertex", "uv"), help="vertex colours or UV texture"
    )
    p.add_argument("--object-size", type=float, default=1.0, help="largest dimension in scene units")
    p.add_argument("--url", default="http://127.0.0.1:8765", help="backend URL")
    p.add_argument("--token", default="", help="backend token, if it was started with one")
    p.add_argument(
        "--glb", type=Path, default=None, help="also export the object as GLB (Blender's exporter)"
    )
    p.add_argument("--render", type=Path, default=None, help="also render a PNG with Cycles on the CPU")
    p.add_argument("--render-resolution", type=int, default=384, help="side of the PNG render (max 512)")
    p.add_argument("--render-samples", type=int, default=16, help="Cycles samples for the PNG render")
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="give up (and cancel) after this many seconds"
    )
    p.add_argument(
        "--backend-python",
        default=None,
        help="Python for a backend started by this script (default: the repo's .venv/bin/python)",
    )
    return p


def import_bpy() -> Any:
    try:
        import bpy
    except ImportError:
        sys.exit(
            "error: bpy is not available: run this inside Blender "
            "(blender --background --python scripts/blender_generate.py -- ...) or with the bpy wheel"
        )
    return bpy


def register_addon() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import bpy

    import blender_addon

    if not hasattr(bpy.types.Scene, "dreamsmith"):
        blender_addon.register()
    return blender_addon


def ensure_backend(url: str, token: str, python: str | None, log_dir: Path) -> tuple[str, Any, Path | None]:
    """The URL of a backend that answers; starts a local one when none does. Returns (url, process, data)."""
    from blender_addon import backend_process
    from blender_addon.client import BackendClient, BackendError

    client = BackendClient(url, token)
    try:
        health = client.health()
        print(f"[dreamsmith] using the backend at {client.url} ({health.summary()})")
        return client.url, None, None
    except BackendError as exc:
        if not exc.unreachable:
            raise
        print(f"[dreamsmith] no backend at {client.url}; starting one")
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = python or (str(venv_python) if venv_python.exists() else sys.executable)
    port = backend_process.free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="dreamsmith-jobs-"))
    extra = ["--data-dir", str(data_dir)] + (["--token", token] if token else [])
    proc = backend_process.start_backend(
        python, ["-m", "backend", "serve"], port=port, cwd=ROOT, log_path=log_dir / "backend.log", extra=extra
    )
    local = BackendClient(proc.url, token)
    health = backend_process.wait_until_healthy(proc, local, timeout_s=180.0)
    print(f"[dreamsmith] started a backend at {proc.url} (pid {proc.pid}, {health.summary()})")
    return proc.url, proc, data_dir


def configure(settings: Any, args: argparse.Namespace) -> None:
    settings.prompt = args.prompt
    settings.negative_prompt = args.negative_prompt
    settings.model = args.model
    settings.method = args.method
    settings.seed = args.seed
    settings.texture = args.texture
    settings.object_size = args.object_size
    if args.steps is not None:
        settings.steps = args.steps
    if args.render_size is not None:
        settings.render_size = args.render_size
    if args.mesh_resolution is not None:
        settings.mesh_resolution = args.mesh_resolution


def export_glb(bpy: Any, obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for other in bpy.context.view_layer.objects:
        other.select_set(other == obj)
    bpy.context.view_layer.objects.active = obj
    options = {"filepath": str(path), "export_format": "GLB", "use_selection": True}
    try:
        # Blender 4.2+ names: write the colour attribute the material uses as COLOR_0.
        bpy.ops.export_scene.gltf(**options, export_vertex_color="MATERIAL")
    except TypeError:  # an exporter without that option
        bpy.ops.export_scene.gltf(**options)


def render_png(bpy: Any, obj: Any, path: Path, resolution: int, samples: int) -> None:
    """Camera at a three-quarter front view framing the object, a sun and soft world light, Cycles CPU."""
    from mathutils import Vector

    scene = bpy.context.scene
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    center = sum(corners, Vector()) / 8.0
    radius = max((c - center).length for c in corners) or 1.0

    cam_data = bpy.data.cameras.new("Dreamsmith Camera")
    cam_data.lens_unit = "FOV"
    cam_data.angle = math.radians(40.0)
    camera = bpy.data.objects.new("Dreamsmith Camera", cam_data)
    scene.collection.objects.link(camera)
    # Backend convention: azimuth 0 looks from -Y (the object's front); 30 degrees round, 20 up.
    el, az = math.radians(20.0), math.radians(30.0)
    distance = radius / math.sin(cam_data.angle / 2.0) * 1.1
    offset = Vector((math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el))) * distance
    camera.location = center + offset
    camera.rotation_euler = (-offset).to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera

    sun_data = bpy.data.lights.new("Dreamsmith Sun", type="SUN")
    sun_data.energy = 3.0
    sun = bpy.data.objects.new("Dreamsmith Sun", sun_data)
    sun.rotation_euler = (math.radians(45.0), 0.0, math.radians(30.0))
    scene.collection.objects.link(sun)
    if scene.world is None:
        scene.world = bpy.data.worlds.new("Dreamsmith World")
    if bpy.app.version < (5, 0, 0):
        scene.world.use_nodes = True  # always on from Blender 5.0
    world_tree = scene.world.node_tree
    background = world_tree.nodes.get("Background") if world_tree is not None else None
    if background is not None:
        background.inputs["Color"].default_value = (0.8, 0.8, 0.8, 1.0)
        background.inputs["Strength"].default_value = 0.6

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_adaptive_sampling = True
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = min(512, resolution)
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.render.render(write_still=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(script_args(argv))
    bpy = import_bpy()
    started = time.monotonic()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    register_addon()
    from blender_addon import headless, properties, session
    from blender_addon.client import BackendError
    from blender_addon.preferences import BackendSettings

    out = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="dreamsmith-run-"))
    proc = None
    data_dir = None
    try:
        url, proc, data_dir = ensure_backend(args.url, args.token, args.backend_python, work)
        session.STATE.settings_override = BackendSettings(
            url=url, token=args.token, cache_directory=str(work)
        )
        configure(properties.settings_of(bpy.context.scene), args)
        obj = headless.generate(bpy.context, timeout_s=args.timeout)
        mesh = obj.data
        print(
            f"[dreamsmith] imported '{obj.name}': {len(mesh.vertices)} vertices, {len(mesh.polygons)} faces"
        )
        if args.render is not None:
            render_png(bpy, obj, args.render.resolve(), args.render_resolution, args.render_samples)
            print(f"[dreamsmith] render: {args.render.resolve()}")
        if args.glb is not None:
            export_glb(bpy, obj, args.glb.resolve())
            print(f"[dreamsmith] glb:    {args.glb.resolve()}")
        out.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(out), check_existing=False)
        print(f"[dreamsmith] blend:  {out}")
    except BackendError as exc:
        print(f"[dreamsmith] error: {exc}", file=sys.stderr)
        if proc is not None and proc.log_tail():
            print(f"[dreamsmith] backend log ({proc.log_path}):\n{proc.log_tail(20)}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            proc.stop()
            print("[dreamsmith] stopped the backend this script started")
        for folder in (data_dir, work):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"[dreamsmith] done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
