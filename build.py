#!/usr/bin/env python3
"""Dreamsmith's one entry point (standard library only; any Python 3.10-3.13).

    python3 build.py demo ["PROMPT"]   set up, generate with the demo prior, build a Blender scene + GLB + render
    python3 build.py test              set up, lint, type-check the backend and add-on, run the test suite
    python3 build.py addon             set up, build and validate the Blender extension zip into dist/
    python3 build.py setup             only create or update .venv
    python3 build.py smoke             `pip install .` into .venv, then a CPU generation and a batch with the
                                       `dreamsmith` command, run outside the checkout (what CI runs on 3.12)

Every command creates or updates `.venv` itself (with the Python that runs build.py: `python3.12 build.py
setup` makes a 3.12 one, replacing a .venv of another version) and does nothing when it is already current.
DREAMSMITH_VENV=DIR uses another folder. Set DREAMSMITH_KEEP_TORCH=1 to keep a torch you installed yourself
(e.g. a CUDA build): the venv is then created with --system-site-packages and torch is not installed or
changed. The bpy wheel (Blender as a module) exists for Python 3.11 only; on other versions the tests that
drive real Blender are skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DREAMSMITH_VENV") or ROOT / ".venv").resolve()
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


def _toml_subset(text: str) -> dict:
    """The part of TOML that pyproject.toml's [project] and [tool.dreamsmith] use (tables, strings, string
    arrays), for Pythons without tomllib (3.10)."""
    data: dict = {}
    table = data
    pending: tuple[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if pending is not None:
            key, items = pending
            items += re.findall(r'"((?:[^"\\]|\\.)*)"', line.split("#", 1)[0] if '"' not in line else line)
            if line.startswith("]"):
                table[key] = items
                pending = None
            continue
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]", line)
        if header:
            table = data
            for part in header.group(1).split("."):
                table = table.setdefault(part, {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip().strip('"'), value.strip()
        if value.startswith("[") and not value.endswith("]"):
            pending = (key, re.findall(r'"((?:[^"\\]|\\.)*)"', value))
        elif value.startswith("["):
            table[key] = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
        elif value.startswith('"'):
            table[key] = value[1 : value.rindex('"')]
    return data


def load_pyproject() -> dict:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return _toml_subset(text)
    return tomllib.loads(text)


def requirements() -> tuple[list[str], str]:
    meta = load_pyproject()
    deps = list(meta["project"]["dependencies"]) + list(meta["project"]["optional-dependencies"]["dev"])
    return deps, meta["tool"]["dreamsmith"]["torch"]


def _is_torch(requirement: str) -> bool:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() == "torch"


def _venv_version() -> str | None:
    """major.minor of the Python that made the venv, from its pyvenv.cfg."""
    try:
        cfg = (VENV / "pyvenv.cfg").read_text()
    except OSError:
        return None
    found = re.search(r"^version(?:_info)?\s*=\s*(\d+\.\d+)", cfg, re.MULTILINE)
    return found.group(1) if found else None


def this_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def setup() -> None:
    if sys.version_info[:2] < (3, 10) or sys.version_info[:2] > (3, 13):
        log(f"error: Python {sys.version.split()[0]}; Dreamsmith needs Python 3.10-3.13")
        sys.exit(2)
    if sys.version_info[:2] != (3, 11):
        log(
            f"note: Python {this_python()}: the bpy wheel (Blender as a module) exists only for 3.11, so the tests "
            "that drive real Blender are skipped; torch comes from PyPI (on Linux its CUDA build, ~4.7 GB)"
        )
    keep_torch = os.environ.get("DREAMSMITH_KEEP_TORCH") == "1"
    deps, torch_pin = requirements()
    # torch is installed on its own first (below): later packages then see it satisfied.
    deps = [d for d in deps if not _is_torch(d)]
    wanted = "\n".join([f"python={this_python()}", f"keep_torch={keep_torch}", torch_pin, *deps])
    digest = hashlib.sha256(wanted.encode()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    made_by = _venv_version()
    if PY.exists() and made_by is not None and made_by != this_python():
        log(f"{VENV} was made by Python {made_by}; making it again with Python {this_python()}")
        shutil.rmtree(VENV)
    if not PY.exists():
        log(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, system_site_packages=keep_torch).create(VENV)
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not keep_torch:
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


def cmd_smoke(args: list[str]) -> int:
    """The package as a user installs it: `pip install .` (backend and its demo prior, the `dreamsmith`
    command), then a short CPU generation and a two-item batch, run in a folder outside the checkout so that
    nothing is imported from it."""
    setup()
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "--force-reinstall"]
    with tempfile.TemporaryDirectory(prefix="dreamsmith-src-") as src:
        # What a source distribution holds, copied: setuptools builds in the tree it is given (build/).
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src)
        shutil.copytree(ROOT / "backend", Path(src) / "backend", ignore=shutil.ignore_patterns("__pycache__"))
        check([*pip, src])
    check([PY, "-m", "pip", "check", "--disable-pip-version-check"])  # every declared dependency satisfied
    dreamsmith = BIN / ("dreamsmith.exe" if os.name == "nt" else "dreamsmith")
    steps = args[0] if args else "20"
    with tempfile.TemporaryDirectory(prefix="dreamsmith-smoke-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        env.pop("PYTHONPATH", None)
        for cmd in (
            [dreamsmith, "--version"],
            [
                PY,
                "-c",
                "import backend, pathlib; p = pathlib.Path(backend.__file__); "
                "assert 'site-packages' in p.parts, p; assert (p.parent / 'priors/demo/unet/config.json').is_file()",
            ],
            [
                dreamsmith,
                "generate",
                "a red sphere",
                "--steps",
                steps,
                "--device",
                "cpu",
                "--out",
                work / "one",
            ],
        ):
            rc = subprocess.call([str(c) for c in cmd], cwd=work, env=env)
            log(f"{' '.join(str(c) for c in cmd)}: exit {rc}")
            if rc != 0:
                return rc
        (work / "prompts.txt").write_text("a red sphere\na blue cube\n")
        rc = subprocess.call(
            [str(dreamsmith), "batch", "prompts.txt", "--out", "batch", "--steps", steps, "--device", "cpu"],
            cwd=work,
            env=env,
        )
        if rc != 0:
            log(f"smoke: the batch failed (exit {rc})")
            return rc
        missing = [
            str(p)
            for p in (
                work / "one" / "mesh.glb",
                work / "batch" / "batch.json",
                work / "batch" / "002-a_blue_cube" / "mesh.npz",
            )
            if not p.is_file() or p.stat().st_size == 0
        ]
        if missing:
            log(f"smoke: missing results: {', '.join(missing)}")
            return 1
    log(f"smoke test passed on Python {this_python()}")
    return 0


COMMANDS = {
    "setup": lambda args: (setup(), 0)[1],
    "test": cmd_test,
    "demo": cmd_demo,
    "addon": cmd_addon,
    "smoke": cmd_smoke,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
