"""Command line: `python -m backend generate "PROMPT" ...`, `python -m backend export FIELD ...`, `serve`.

The generation options are derived from the settings table (`backend.config`, fields declared with
`cli=True`); every other setting can be given with `--set KEY=VALUE`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from backend import __version__
from backend.config import DEFAULT_METHOD, GenerationConfig, config_from_dict, with_overrides
from backend.errors import DreamsmithError, GenerationCancelled, ModelLoadError, OutputError
from backend.fileio import (
    check_output_folder,
    remove_orphan_temporaries,
    result_bytes_bound,
    write_bytes_atomic,
)
from backend.settings import Setting, settings_of

# What `generate --resume` may change: the rest of a resumed run must stay as it was recorded.
RESUMABLE_CHANGES = ("steps", "preview_every", "live_every", "device", "checkpoint_every")


class _Parser(argparse.ArgumentParser):
    """Bad arguments end with exit status 2 and one line (argparse's usage block is left to --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "result"


def _method_help() -> str:
    from backend.engine.methods import METHODS

    lines = [
        f"{name}: {m.description} (guidance {m.rule.default_guidance_scale:g})" for name, m in METHODS.items()
    ]
    return f"score distillation method (default {DEFAULT_METHOD}). " + "; ".join(lines)


def _add_setting(parser: argparse.ArgumentParser, s: Setting) -> None:
    """One option for one setting; its default stays None so that only options given on the command line
    override (the config's defaults, or a resumed run's settings, fill in the rest)."""
    spec = s.spec
    default = s.default
    help_text = (spec.cli_help or spec.help).replace("%", "%%")
    if s.key == "method":
        help_text = _method_help()
    elif default not in (None, ""):
        help_text += f" (default {default})"
    kw: dict[str, Any] = {"dest": s.key, "default": None, "help": help_text}
    tp = s.base_type
    if tp in (int, float):
        kw["type"] = tp
        kw["metavar"] = "N" if tp is int else "X"
    elif tp is str:
        allowed = spec.allowed()
        if allowed is not None:
            kw["choices"] = allowed
    else:  # pragma: no cover - a declaration error, caught by the CLI tests
        raise TypeError(f"setting {s.key} cannot be a CLI option")
    parser.add_argument(s.flag, **kw)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["guidance_scale=20", "camera.fov_deg=[40,50]"] -> {name: value}; values are JSON, else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise DreamsmithError(f"--set wants KEY=VALUE (a setting, e.g. lr_grid=0.02), got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def build_parser() -> argparse.ArgumentParser:
    prog = "dreamsmith" if Path(sys.argv[0]).name == "dreamsmith" else "python -m backend"
    parser = _Parser(prog=prog, description="Dreamsmith text-to-3D backend.")
    parser.add_argument("--version", action="version", version=f"dreamsmith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser(
        "generate",
        help="generate one asset from a prompt and write mesh.glb, mesh.npz, preview.png and field.pt",
        description="Optimize a radiance field from a text prompt by score distillation, then extract a "
        "mesh with marching cubes. Coordinates are Z-up (as in Blender); the object's front faces -Y. "
        "The optimized field is saved as field.pt (export it again with `export`, continue it with --resume).",
    )
    gen.add_argument("prompt", nargs="?", help='what to make, e.g. "a red cube" (1-500 characters)')
    gen.add_argument("--out", type=Path, default=None, help="output folder (default: out/<prompt>)")
    cli_settings = [s for s in settings_of(GenerationConfig) if s.spec.cli]
    for s in cli_settings:
        _add_setting(gen, s)
    gen.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, e.g. --set lr_grid=0.02 --set camera.fov_deg=[40,50] (docs/design.md lists them)",
    )
    gen.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="FIELD",
        help="continue the run saved in this field.pt (e.g. after Ctrl-C, or with more --steps)",
    )
    gen.add_argument(
        "--init-field",
        type=Path,
        default=None,
        metavar="FIELD",
        help="start from this field.pt's shape instead of the initial blob (a warm start)",
    )

    exp = sub.add_parser(
        "export",
        help="export a saved field.pt again with other export settings",
        description="Extract the mesh of a field saved by `generate` (its field.pt) with new export settings.",
    )
    exp.add_argument("field", type=Path, help="a field.pt, or the folder that holds one")
    exp.add_argument("--out", type=Path, required=True, help="output folder")
    for s in cli_settings:
        if s.key.startswith("export."):
            _add_setting(exp, s)
    exp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")

    bat = sub.add_parser(
        "batch",
        help="generate every prompt of a .csv, .jsonl or .txt file, one folder each (resumable)",
        description="Generate one asset per line of FILE into DIR/<item>/ and summarize them in DIR/batch.json. "
        "CSV: a header row (prompt, optional name, any settings by dotted key); JSONL: one object a line; "
        "TXT: one prompt a line. A line's settings override the options below. Every line is checked before "
        "anything runs. Running it again skips finished items (and failed ones, unless --retry-failed).",
    )
    bat.add_argument("file", type=Path, help="the batch file: prompts.csv, prompts.jsonl or prompts.txt")
    bat.add_argument("--out", type=Path, default=None, help="output folder (default: out/<file name>)")
    for s in cli_settings:
        _add_setting(bat, s)
    bat.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, for every line (a line's own value wins)",
    )
    bat.add_argument("--retry-failed", action="store_true", help="run the items that failed before again")
    bat.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run each item as a Ray task (one GPU each, or CPUs where the cluster has no GPU): on the "
        "cluster at ADDRESS (auto, HOST:6379, ray://HOST:10001), or on a local one started for the run "
        "(needs pip install 'dreamsmith[ray]')",
    )
    bat.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="a local cluster's size: items at once (default: one per GPU, else per CPU core)",
    )
    bat.add_argument(
        "--ray-retries",
        type=int,
        default=3,
        metavar="N",
        help="times an item is started again when its worker dies (default %(default)s)",
    )
    bat.add_argument(
        "--ray-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs per item on a cluster without GPUs (default %(default)s)",
    )
    train = sub.add_parser(
        "train-generator",
        help="train a prompt-amortized generator (instant generation) on a list of prompts",
        description="Train one network that maps a prompt to a 3D field (ScaleDreamer), by score distillation "
        "from the prior over many prompts; `generate --generator OUT` then makes a shape in one forward pass. "
        "Data-parallel with torchrun --nproc_per_node N.",
    )
    from backend.train_generator import add_arguments

    add_arguments(train)

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


def _given(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The settings given on the command line, as dotted keys."""
    return {
        s.key: getattr(args, s.key)
        for s in settings_of(GenerationConfig)
        if s.spec.cli and s.key.startswith(prefix) and getattr(args, s.key, None) is not None
    }


def _generation_config(args: argparse.Namespace) -> tuple[GenerationConfig, Any, Any]:
    """The config of a `generate` call and the checkpoints it resumes from or starts from."""
    from backend.engine.checkpoint import load_checkpoint

    changes = _given(args) | parse_overrides(args.overrides)
    if args.resume is not None and args.generator is not None:
        raise DreamsmithError("--resume continues an optimization; --generator makes a field in one pass")
    if args.resume is not None and args.init_field is not None:
        raise DreamsmithError("--resume continues a saved run; --init-field starts a new one: give only one")
    if args.resume is not None:
        resume = load_checkpoint(args.resume)
        if not resume.resumable:
            raise DreamsmithError(f"{args.resume} holds no optimizer state, so it cannot be resumed")
        if args.prompt is not None and args.prompt != resume.config["prompt"]:
            raise DreamsmithError(
                f"{args.resume} is a run of {resume.config['prompt']!r}, not of {args.prompt!r}"
            )
        fixed = [k for k in changes if k not in RESUMABLE_CHANGES and not k.startswith("export.")]
        if fixed:
            raise DreamsmithError(f"{fixed[0]} cannot change when resuming (only steps, previews and export)")
        cfg = with_overrides(config_from_dict(resume.config), changes)
        if cfg.steps <= resume.step:
            raise DreamsmithError(
                f"the saved run has done {resume.step} steps already; pass --steps above that"
            )
        return cfg, resume, None
    if args.prompt is None:
        raise DreamsmithError('prompt: is required, e.g. generate "a red cube"')
    if args.generator is not None:
        from backend.engine.generator import resolve_generator

        if args.init_field is not None:
            raise DreamsmithError(
                "--generator makes the field in one pass; --init-field starts an optimization"
            )
        resolve_generator(args.generator)  # an unknown generator is said now, in one line
    init = load_checkpoint(args.init_field) if args.init_field is not None else None
    return with_overrides(GenerationConfig(prompt=args.prompt), changes), None, init


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        cfg, resume, init = _generation_config(args)
    except DreamsmithError as exc:
        return _fail(str(exc))
    out = args.out or (args.resume.parent if args.resume is not None else Path("out") / slug(cfg.prompt))
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
    # Heavy imports (diffusers) only once the arguments are known to be good.
    from tqdm import tqdm

    from backend.engine.pipeline import Progress, generate

    # The bar starts with the optimization, so errors while loading the model stay a single line.
    bars: list[Any] = []
    warned: set[str] = set()

    def on_progress(p: Progress) -> None:
        for warning in p.warnings:
            if warning not in warned:
                warned.add(warning)
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        if p.phase == "optimizing":
            if not bars:
                bars.append(
                    tqdm(
                        total=cfg.steps,
                        initial=p.step - 1,
                        unit="step",
                        dynamic_ncols=True,
                        desc="optimizing",
                    )
                )
            bars[0].set_postfix(t=p.t, loss=f"{p.loss:.4g}", refresh=False)
            bars[0].update(p.step - bars[0].n)
        elif p.phase in ("generating", "extracting mesh", "texturing"):
            if bars:
                bars[0].set_description(p.phase)
                bars[0].refresh()
            else:
                print(p.phase, flush=True)

    def close() -> None:
        if bars:
            bars[0].close()

    try:
        result = generate(
            cfg, out, on_progress=on_progress, resume=resume, init_field=init, checkpoint_on_stop=True
        )
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
        field = out / "field.pt"
        hint = f"; continue with: generate --resume {field}" if field.is_file() else ""
        print(f"interrupted{hint}", file=sys.stderr)
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


def cmd_export(args: argparse.Namespace) -> int:
    from backend.config import ExportConfig
    from backend.engine.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(args.field)
        saved = config_from_dict(ckpt.config).export
        changes = {k.split(".", 1)[1]: v for k, v in _given(args, "export.").items()}
        export = ExportConfig(**{**saved.__dict__, **changes}).validate()
    except DreamsmithError as exc:
        return _fail(str(exc))
    from backend.engine.pipeline import export_checkpoint

    try:
        result = export_checkpoint(ckpt, export, args.out, device=args.device)
    except DreamsmithError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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


def cmd_batch(args: argparse.Namespace) -> int:
    from backend.batch import command

    try:
        changes = _given(args) | parse_overrides(args.overrides)
        # The command line's own settings checked once, not once per line.
        with_overrides(GenerationConfig(prompt="x"), changes)
    except DreamsmithError as exc:
        return _fail(str(exc))
    if args.ray_workers is not None and args.ray_workers < 1:
        return _fail("--ray-workers: must be at least 1")
    if args.ray_retries < 0 or args.ray_cpus <= 0:
        return _fail("--ray-retries must be 0 or more and --ray-cpus above 0")
    return command(
        args.file,
        args.out,
        changes,
        retry_failed=args.retry_failed,
        ray=args.ray is not None,
        ray_address=args.ray or None,
        ray_workers=args.ray_workers,
        ray_retries=args.ray_retries,
        ray_cpus=args.ray_cpus,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.service import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir, token=args.token, device=args.device)


def cmd_train_generator(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from backend.train_generator import run

    return run(args, argv[1:] if argv is not None else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train-generator":
        return cmd_train_generator(args, argv)
    commands = {"generate": cmd_generate, "export": cmd_export, "batch": cmd_batch, "serve": cmd_serve}
    return commands[args.command](args)
