"""Command line: `python -m backend generate "PROMPT" ...` and `python -m backend serve ...`."""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from pathlib import Path

from backend import __version__
from backend.config import DEFAULT_GUIDANCE, DEFAULT_METHOD, METHODS, TEXTURE_MODES, GenerationConfig
from backend.errors import DreamsmithError, GenerationCancelled, ModelLoadError, OutputError
from backend.fileio import (
    check_output_folder,
    remove_orphan_temporaries,
    result_bytes_bound,
    write_bytes_atomic,
)

_DEFAULTS = GenerationConfig(prompt="-")


class _Parser(argparse.ArgumentParser):
    """Bad arguments end with exit status 2 and one line (argparse's usage block is left to --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "result"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m backend", description="Dreamsmith text-to-3D backend.")
    parser.add_argument("--version", action="version", version=f"dreamsmith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser(
        "generate",
        help="generate one asset from a prompt and write mesh.glb, mesh.npz and preview.png",
        description="Optimize a radiance field from a text prompt by score distillation, then extract a "
        "mesh with marching cubes. Coordinates are Z-up (as in Blender); the object's front faces -Y.",
    )
    gen.add_argument("prompt", help='what to make, e.g. "a red cube" (1-500 characters)')
    gen.add_argument("--negative-prompt", default="", help="what to steer away from (default: none)")
    gen.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help="score distillation method: tp-sds (DreamTime time-prioritized SDS, default), sds (uniform "
        "timesteps), asd (ScaleDreamer asynchronous timesteps), tp-asd (prioritized schedule + ASD)",
    )
    gen.add_argument(
        "--steps", type=int, default=_DEFAULTS.steps, help="optimization steps (default %(default)s)"
    )
    gen.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same mesh"
    )
    gen.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"classifier-free guidance scale (default per method: SDS {DEFAULT_GUIDANCE['sds']:g}, "
        f"ASD {DEFAULT_GUIDANCE['asd']:g})",
    )
    gen.add_argument(
        "--model",
        default=None,
        help="diffusers model: a local folder or a hub id (default: the built-in demo prior)",
    )
    gen.add_argument("--out", type=Path, default=None, help="output folder (default: out/<prompt>)")
    gen.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default auto)"
    )
    gen.add_argument(
        "--render-size",
        type=int,
        default=_DEFAULTS.render_size,
        help="side of the rendered training images in pixels (default %(default)s)",
    )
    gen.add_argument(
        "--mesh-resolution",
        type=int,
        default=_DEFAULTS.export.mesh_resolution,
        help="marching-cubes grid resolution per axis (default %(default)s)",
    )
    gen.add_argument(
        "--texture",
        default=_DEFAULTS.export.texture,
        choices=TEXTURE_MODES,
        help="vertex: colours per vertex (fast, default); uv: unwrap and bake a texture image",
    )
    gen.add_argument(
        "--texture-size", type=int, default=_DEFAULTS.export.texture_size, help="texture side in pixels (uv)"
    )
    gen.add_argument(
        "--target-faces",
        type=int,
        default=_DEFAULTS.export.target_faces,
        help="decimate the mesh to about this many faces (default %(default)s)",
    )
    gen.add_argument(
        "--smoothing",
        type=float,
        default=_DEFAULTS.export.smoothing,
        help="smooth the density grid before marching cubes, sigma in grid cells; 0: off (default %(default)s)",
    )
    gen.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="density level for marching cubes (default: chosen automatically)",
    )
    gen.add_argument(
        "--preview-every", type=int, default=_DEFAULTS.preview_every, help="write a preview every N steps"
    )

    serve = sub.add_parser(
        "serve",
        help="run the local HTTP API the Blender add-on talks to",
        description="Serve HTTP API v1. Loopback only by default; any other address needs a token.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    serve.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    serve.add_argument("--data-dir", type=Path, default=None, help="where jobs and results are kept")
    serve.add_argument(
        "--token", default=None, help="require 'Authorization: Bearer TOKEN' (or set DREAMSMITH_TOKEN)"
    )
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_generate(args: argparse.Namespace) -> int:
    from backend.config import CameraConfig, ExportConfig

    try:
        cfg = GenerationConfig(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            method=args.method,
            steps=args.steps,
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            model=args.model,
            render_size=args.render_size,
            preview_every=args.preview_every,
            device=args.device,
            camera=CameraConfig(),
            export=ExportConfig(
                mesh_resolution=args.mesh_resolution,
                texture=args.texture,
                texture_size=args.texture_size,
                target_faces=args.target_faces,
                smoothing=args.smoothing,
                threshold=args.threshold,
            ),
        ).validate()
    except DreamsmithError as exc:
        return _fail(str(exc))
    out = args.out or Path("out") / slug(cfg.prompt)
    # A file in the way, a read-only or full disk: said now, not after the optimization.
    export = cfg.export
    try:
        check_output_folder(
            out, result_bytes_bound(export.target_faces, export.texture_size, export.texture == "uv")
        )
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    remove_orphan_temporaries(out)  # left by a run that was killed while writing
    # Heavy imports (torch, diffusers) only once the arguments are known to be good.
    from tqdm import tqdm

    from backend.engine.pipeline import Progress, generate

    # The bar starts with the optimization, so errors while loading the model stay a single line.
    bars: list = []

    def on_progress(p: Progress) -> None:
        if p.phase == "optimizing":
            if not bars:
                bars.append(tqdm(total=cfg.steps, unit="step", dynamic_ncols=True, desc="optimizing"))
            bars[0].set_postfix(t=p.t, loss=f"{p.loss:.4g}", refresh=False)
            bars[0].update(p.step - bars[0].n)
        elif p.phase in ("extracting mesh", "texturing"):
            if bars:
                bars[0].set_description(p.phase)
                bars[0].refresh()
            else:
                print(p.phase, flush=True)

    def close() -> None:
        if bars:
            bars[0].close()

    try:
        result = generate(cfg, out, on_progress=on_progress)
    except ModelLoadError as exc:
        close()
        return _fail(str(exc))
    except GenerationCancelled:
        close()
        return _fail("cancelled")
    except DreamsmithError as exc:  # OutputError included: the export removed what it had written
        close()
        remove_orphan_temporaries(out)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        close()
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        close()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback in a file for the report
        close()
        print(
            f"error: internal error ({type(exc).__name__}: {exc}); {_save_traceback(out, exc)}",
            file=sys.stderr,
        )
        return 1
    close()
    print(f"done in {result.seconds:.1f} s: {result.n_vertices} vertices, {result.n_faces} faces")
    for name, path in sorted(result.files.items()):
        print(f"  {name}: {path}")
    return 0


def _save_traceback(out: Path, exc: BaseException) -> str:
    """Write the traceback to out/error.log; what to tell the user about it."""
    text = "".join(traceback.format_exception(exc))
    try:
        path = write_bytes_atomic(Path(out) / "error.log", text.encode("utf-8"))
    except OSError:
        return "please report it"
    return f"please report it with {path}"


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.service import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir, token=args.token, device=args.device)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return cmd_generate(args)
    return cmd_serve(args)
