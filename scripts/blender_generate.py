"""Generate an object from a prompt without Blender's UI and save it as a .blend (and GLB / PNG render).

Works both ways:

    blender --background --python scripts/blender_generate.py -- --prompt "a red cube" --out scene.blend
    .venv/bin/python scripts/blender_generate.py --prompt "a red cube" --out scene.blend   # bpy wheel

`--batch FILE` builds a batch's results instead (one .blend in a grid, or `--each` one per item; see
scripts/blender_batch.py).

It registers the add-on from `blender_addon/` in this repository, uses the backend at --url, or, when
nothing answers there, starts one itself (`.venv/bin/python -m backend serve` on a free port, jobs in a
temporary folder) and stops it afterwards. `--glb` exports the imported object with Blender's own glTF
exporter (so the GLB matches the .blend: size, placement and material); `--render` makes a small Cycles
CPU render with a camera framing the object and three area lights (they are saved in the .blend too).
Steps and training render size default to the backend's own (tuned) defaults.

On success it prints where each file is; on any failure it prints one `[dreamsmith] error: ...` line
(with the started backend's log kept as OUT.backend.log) and exits with status 1.
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
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help='what to make, e.g. "a red cube"')
    what.add_argument(
        "--batch",
        metavar="FILE",
        help="build a batch's results: a batch file (.csv/.jsonl/.txt, run first with `python -m backend "
        "batch`) or a finished batch's folder or batch.json (scripts/blender_batch.py)",
    )
    p.add_argument("--out", type=Path, required=True, help="the .blend file to write (with --each: a folder)")
    p.add_argument("--each", action="store_true", help="batch: one .blend per item in the --out folder")
    p.add_argument(
        "--batch-dir", type=Path, default=None, help="batch: its results folder (default <out>-batch)"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="batch: run the items that failed before again"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="batch: run it on Ray (see batch --help)",
    )
    p.add_argument("--negative-prompt", default="", help="what to steer away from")
    p.add_argument(
        "--model", default="", help="diffusers folder or hub id on the backend (default: demo prior)"
    )
    p.add_argument(
        "--method",
        default=None,
        help="score distillation method, one the backend offers (its /v1/health lists them; default: tp-sds)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimization steps (default: the backend's tuned default)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--render-size",
        type=int,
        default=None,
        help="training render size in pixels (default: the backend's tuned default)",
    )
    p.add_argument(
        "--mesh-resolution", type=int, default=None, help="marching-cubes resolution (default: the add-on's)"
    )
    p.add_argument(
        "--texture", default=None, choices=("vertex", "uv"), help="vertex colours (default) or UV texture"
    )
    p.add_argument("--object-size", type=float, default=1.0, help="largest dimension in scene units")
    p.add_argument("--url", default="http://127.0.0.1:8765", help="backend URL")
    p.add_argument("--token", default="", help="backend token, if it was started with one")
    p.add_argument(
        "--glb", type=Path, default=None, help="also export the object as GLB (Blender's exporter)"
    )
    p.add_argument("--render", type=Path, default=None, help="also render a PNG with Cycles on the CPU")
    p.add_argument("--render-resolution", type=int, default=384, help="side of the PNG render (max 512)")
    p.add_argument("--render-samples", type=int, default=32, help="Cycles samples for the PNG render")
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


def ensure_backend(url: str, token: str, python: str | None, work: Path, started: list[Any]) -> str:
    """The URL of a backend that answers; starts a local one (jobs and log under `work`) when none does.

    A started process is appended to `started` at once, so the caller can stop it and keep its log
    whatever happens next.
    """
    from blender_addon import backend_process
    from blender_addon.client import BackendClient, BackendError

    client = BackendClient(url, token)
    try:
        health = client.health()
        print(f"[dreamsmith] using the backend at {client.url} ({health.summary()})")
        return client.url
    except BackendError as exc:
        if not exc.unreachable:
            raise
        print(f"[dreamsmith] no backend at {client.url}; starting one")
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = python or (str(venv_python) if venv_python.exists() else sys.executable)
    extra = ["--data-dir", str(work / "jobs")] + (["--token", token] if token else [])
    try:
        proc = backend_process.start_backend(
            python,
            ["-m", "backend", "serve"],
            port=backend_process.free_port(),
            cwd=ROOT,
            log_path=work / "backend.log",
            extra=extra,
        )
    except BackendError as exc:
        raise BackendError(
            f"Could not start the backend with {python!r}: {exc.__cause__ or exc}. "
            "Run `python3 build.py setup`, or pass --backend-python with the Python that has the backend's "
            "packages."
        ) from exc
    started.append(proc)
    health = backend_process.wait_until_healthy(proc, BackendClient(proc.url, token), timeout_s=180.0)
    print(f"[dreamsmith] started a backend at {proc.url} (pid {proc.pid}, {health.summary()})")
    return proc.url


def configure(settings: Any, args: argparse.Namespace) -> None:
    settings.prompt = args.prompt
    settings.negative_prompt = args.negative_prompt
    settings.model = args.model
    if args.method is not None:
        settings.method_name = args.method  # the backend refuses an unknown one, naming the choices
    settings.seed = args.seed if args.seed is not None else 0
    settings.texture = args.texture or "vertex"
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


def _bounding_sphere(obj: Any) -> tuple[Any, float]:
    """Centre (of the world-space bounding box) and radius (farthest vertex from it) of a mesh object."""
    import numpy as np
    from mathutils import Vector

    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    if len(co) == 0:
        return obj.matrix_world.translation.copy(), 1.0
    m = np.array(obj.matrix_world, dtype=np.float64)
    world = co @ m[:3, :3].T + m[:3, 3]
    center = (world.min(axis=0) + world.max(axis=0)) / 2.0
    radius = float(np.sqrt(((world - center) ** 2).sum(axis=1)).max()) or 1.0
    return Vector(center.tolist()), radius


def _orbit(center: Any, elevation_deg: float, azimuth_deg: float, distance: float) -> Any:
    """A point on the orbit round `center` (backend convention: azimuth 0 = on -Y, 90 = on +X)."""
    from mathutils import Vector

    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    return (
        center + Vector((math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el))) * distance
    )


def _add_area_light(
    bpy: Any, scene: Any, name: str, location: Any, target: Any, energy: float, size: float
) -> Any:
    data = bpy.data.lights.new(name, type="AREA")
    data.energy = energy
    data.shape = "DISK"
    data.size = size
    light = bpy.data.objects.new(name, data)
    light.location = location
    light.rotation_euler = (target - location).to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(light)
    return light


def render_png(bpy: Any, obj: Any, path: Path, resolution: int, samples: int) -> None:
    """A small studio render with Cycles on the CPU: a camera at a three-quarter front view (30 degrees
    round from the object's front, 20 up) that frames the whole object, a soft key light from the
    camera's left, a fill from its right and a rim light behind, in front of a neutral grey backdrop.

    Light energies scale with the object's size, so the exposure does not depend on `object_size`.
    """
    scene = bpy.context.scene
    center, radius = _bounding_sphere(obj)

    cam_data = bpy.data.cameras.new("Dreamsmith Camera")
    cam_data.lens_unit = "FOV"
    cam_data.angle = math.radians(35.0)
    cam_data.clip_start = radius * 0.01
    cam_data.clip_end = radius * 100.0
    camera = bpy.data.objects.new("Dreamsmith Camera", cam_data)
    scene.collection.objects.link(camera)
    # The bounding sphere fills about 75% of the (square) frame.
    distance = radius / math.sin(cam_data.angle / 2.0) / 0.75
    camera.location = _orbit(center, 20.0, 30.0, distance)
    camera.rotation_euler = (center - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera

    # Area-light power falls off with the square of the distance: scale it with the object's size.
    d = radius * 4.0
    power = 1.0 / 0.5**2 * radius**2  # energies below are tuned for a radius of 0.5
    _add_area_light(
        bpy, scene, "Dreamsmith Key", _orbit(center, 45.0, -35.0, d), center, 130.0 * power, d * 0.6
    )
    _add_area_light(
        bpy, scene, "Dreamsmith Fill", _orbit(center, 10.0, 80.0, d), center, 35.0 * power, d * 0.8
    )
    _add_area_light(
        bpy, scene, "Dreamsmith Rim", _orbit(center, 35.0, 170.0, d), center, 90.0 * power, d * 0.4
    )

    if scene.world is None:
        scene.world = bpy.data.worlds.new("Dreamsmith World")
    world = scene.world
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True  # always on from Blender 5.0
    tree = world.node_tree
    if tree is not None:
        tree.nodes.clear()
        # Camera rays see a mid-grey backdrop; everything else sees a dim, neutral ambient light.
        ambient = tree.nodes.new("ShaderNodeBackground")
        ambient.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        ambient.inputs["Strength"].default_value = 0.15
        backdrop = tree.nodes.new("ShaderNodeBackground")
        backdrop.inputs["Color"].default_value = (0.25, 0.25, 0.25, 1.0)
        backdrop.inputs["Strength"].default_value = 1.0
        light_path = tree.nodes.new("ShaderNodeLightPath")
        mix = tree.nodes.new("ShaderNodeMixShader")
        output = tree.nodes.new("ShaderNodeOutputWorld")
        tree.links.new(light_path.outputs["Is Camera Ray"], mix.inputs["Fac"])
        tree.links.new(ambient.outputs["Background"], mix.inputs[1])
        tree.links.new(backdrop.outputs["Background"], mix.inputs[2])
        tree.links.new(mix.outputs["Shader"], output.inputs["Surface"])

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_adaptive_sampling = True
    scene.cycles.use_denoising = True  # OpenImageDenoise on the CPU: few samples, clean image
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "AgX - Medium High Contrast"
    scene.render.resolution_x = scene.render.resolution_y = min(512, resolution)
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.render.render(write_still=True)


def keep_backend_log(proc: Any, out: Path) -> Path | None:
    """Copy the log of a backend this script started next to the output (its folder is removed)."""
    if proc is None or not proc.log_path.exists():
        return None
    kept = out.with_name(out.stem + ".backend.log")
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proc.log_path, kept)
    except OSError:
        return None
    return kept


def describe_object(obj: Any) -> str:
    mesh = obj.data
    materials = ", ".join(f"'{m.name}'" for m in mesh.materials if m is not None) or "none"
    return (
        f"object '{obj.name}', {len(mesh.vertices)} vertices, {len(mesh.polygons)} faces, "
        f"material {materials}"
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(script_args(argv))
    bpy = import_bpy()
    if args.batch is not None:
        for path in (ROOT, Path(__file__).resolve().parent):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        import blender_batch

        return int(blender_batch.main_batch(args, bpy))
    started = time.monotonic()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    register_addon()
    from blender_addon import headless, properties, session
    from blender_addon.client import BackendError
    from blender_addon.preferences import BackendSettings

    out = args.out.resolve()
    glb = args.glb.resolve() if args.glb is not None else None
    render = args.render.resolve() if args.render is not None else None
    work = Path(tempfile.mkdtemp(prefix="dreamsmith-run-"))
    backends: list[Any] = []  # the backend process this script starts, if any
    failed = True
    show_log = True  # on failure, quote the started backend's log (not for a request it refused)
    kept_log: Path | None = None  # where the started backend's log was copied, once copied
    written: list[tuple[str, Path]] = []
    try:
        url = ensure_backend(args.url, args.token, args.backend_python, work, backends)
        session.STATE.settings_override = BackendSettings(
            url=url, token=args.token, cache_directory=str(work)
        )
        configure(properties.settings_of(bpy.context.scene), args)
        gen_started = time.monotonic()
        obj = headless.generate(bpy.context, timeout_s=args.timeout)
        gen_seconds = time.monotonic() - gen_started
        run = session.STATE.run
        backend_seconds = run.status.elapsed_s if run is not None and run.status is not None else 0.0
        steps = run.status.steps if run is not None and run.status is not None else 0
        print(f"[dreamsmith] imported {describe_object(obj)}")
        print(
            f"[dreamsmith] generation: {gen_seconds:.1f} s ({steps} steps, {backend_seconds:.1f} s on the "
            "backend, model load included)"
        )
        if render is not None:
            t0 = time.monotonic()
            render_png(bpy, obj, render, args.render_resolution, args.render_samples)
            print(f"[dreamsmith] rendered {render} in {time.monotonic() - t0:.1f} s")
            written.append(("render", render))
        if glb is not None:
            export_glb(bpy, obj, glb)
            written.insert(0, ("glb", glb))
        out.parent.mkdir(parents=True, exist_ok=True)
        # No `demo.blend1` backup beside a file this script overwrites (factory settings: not saved).
        bpy.context.preferences.filepaths.save_version = 0
        bpy.ops.wm.save_as_mainfile(filepath=str(out), check_existing=False)
        written.insert(0, ("blend", out))
        failed = False
    except BackendError as exc:
        message = str(exc)
        show_log = not (exc.status is not None and 400 <= exc.status < 500)
        kept_log = keep_backend_log(backends[0], out) if backends else None
        if kept_log is not None:  # the temporary folder named in the message is about to go
            message = message.replace(str(backends[0].log_path), str(kept_log))
        print(f"[dreamsmith] error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        print("[dreamsmith] interrupted; a running job was cancelled", file=sys.stderr)
    except Exception as exc:  # a clear line (and the traceback) instead of a silent half-written result
        import traceback

        traceback.print_exc()
        print(f"[dreamsmith] error: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        for proc in backends:
            if failed:
                tail = proc.log_tail(20)
                kept = kept_log or keep_backend_log(proc, out)
                if tail and show_log:
                    print(f"[dreamsmith] backend log (last lines):\n{tail}", file=sys.stderr)
                if kept is not None:
                    print(f"[dreamsmith] full backend log: {kept}", file=sys.stderr)
            proc.stop()
            print("[dreamsmith] stopped the backend this script started")
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(
            f"[dreamsmith] FAILED after {time.monotonic() - started:.1f} s; {out} was not written",
            file=sys.stderr,
        )
        return 1
    print(f"[dreamsmith] done in {time.monotonic() - started:.1f} s; {describe_object(obj)}. Files:")
    for label, path in written:
        print(f"[dreamsmith]   {label + ':':7s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
