#!/usr/bin/env python3
"""Dreamsmith's one entry point (standard library only).

    python3 build.py demo ["PROMPT"]   set up, generate with the demo prior, build a Blender scene + GLB + render
    python3 build.py test              set up, lint, type-check the backend and add-on, run the test suite
    python3 build.py addon             set up, build and validate the Blender extension zip into dist/
    python3 build.py setup             only create or update .venv

Every command creates or updates `.venv` itself and does nothing when it is already current.
Set DREAMSMITH_KEEP_TORCH=1 to keep a torch you installed yourself (e.g. a CUDA build): the venv is then
created with --system-site-packages and torch is not installed or changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".dreamsmith-installed"


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def run(cmd: list[str], **kw) -> int:
    log(" ".join(str(c) for c in cmd))
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)


def check(cmd: list[str], **kw) -> None:
    rc = run(cmd, **kw)
    if rc != 0:
        log(f"failed (exit {rc}): {' '.join(str(c) for c in cmd)}")
        sys.exit(rc)


def requirements() -> tuple[list[str], str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = list(meta["project"]["dependencies"]) + list(meta["project"]["optional-dependencies"]["dev"])
    return deps, meta["tool"]["dreamsmith"]["torch"]


def setup() -> None:
    if sys.version_info[:2] != (3, 11):
        log(
            f"warning: Python {sys.version.split()[0]}; the bpy wheel (Blender as a module) needs Python 3.11"
        )
    keep_torch = os.environ.get("DREAMSMITH_KEEP_TORCH") == "1"
    deps, torch_pin = requirements()
    wanted = "\n".join([f"keep_torch={keep_torch}", torch_pin, *deps])
    digest = hashlib.sha256(wanted.encode()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    if not PY.exists():
        log(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, system_site_packages=keep_torch).create(VENV)
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not keep_torch:
        # Installed on its own first: later packages then see torch satisfied and pull no other build.
        check([*pip, torch_pin])
    check([*pip, *deps])
    STAMP.write_text(digest)
    log("environment ready")


def cmd_test(args: list[str]) -> int:
    setup()
    check([PY, "-m", "ruff", "check", "."])
    check([PY, "-m", "ruff", "format", "--check", "."])
    return run([PY, "-m", "pytest", "-q", *args])


def cmd_demo(args: list[str]) -> int:
    setup()
    # `build.py demo ["PROMPT"] [--steps N --seed S ...]`: options pass through to the headless script.
    named = bool(args) and not args[0].startswith("-")
    prompt = args[0] if named else "a red sphere"
    extra = args[1:] if named else args
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    rc = run(
        [
            PY,
            "scripts/blender_generate.py",
            "--prompt",
            prompt,
            "--out",
            out / "demo.blend",
            "--glb",
            out / "demo.glb",
            "--render",
            out / "demo.png",
            *extra,
        ]
    )
    if rc != 0:
        log(f"demo failed (exit {rc}); see the [dreamsmith] error above")
    return rc


def cmd_addon(args: list[str]) -> int:
    setup()
    return run([PY, "scripts/build_addon.py", *args])


COMMANDS = {
    "setup": lambda args: (setup(), 0)[1],
    "test": cmd_test,
    "demo": cmd_demo,
    "addon": cmd_addon,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
