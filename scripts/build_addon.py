"""Build the Dreamsmith extension zip into dist/ and validate it, with Blender's own extension tool.

The `blender --command extension build|validate` commands are implemented by
`addons_core/bl_pkg/cli/blender_ext.py`, a standard-library-only script that the bpy wheel ships; this
runs that very script (no Blender binary needed), with Blender's list of valid tags.

    .venv/bin/python scripts/build_addon.py [--output-dir dist]

Prints the zip's path; exits non-zero when the build or the validation fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_toml(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: build.py's reader of the simple TOML this repo writes
        sys.path.insert(0, str(ROOT))
        from build import _toml_subset

        return _toml_subset(text)
    return tomllib.loads(text)


SOURCE = ROOT / "blender_addon"


def blender_scripts_dir() -> Path:
    """`.../bpy/<version>/scripts` inside the installed bpy wheel, found without importing bpy."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("The bpy wheel is not installed in this Python; run `python3 build.py setup` first.")
    package = Path(next(iter(spec.submodule_search_locations)))
    for scripts in sorted(package.glob("*/scripts")):
        if (scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py").exists():
            return scripts
    raise SystemExit(f"Blender's extension tool (blender_ext.py) was not found under {package}.")


def extension_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    scripts = blender_scripts_dir()
    tool = scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    tags = scripts / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    command = [sys.executable, str(tool), *args, "--valid-tags", str(tags)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def zip_name(source: Path = SOURCE) -> str:
    manifest = read_toml(source / "blender_manifest.toml")
    return f"{manifest['id']}-{manifest['version']}.zip"


def build(output_dir: Path, source: Path = SOURCE) -> Path:
    """Build and validate; returns the zip path, raises RuntimeError with the tool's output on failure."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / zip_name(source)
    target.unlink(missing_ok=True)
    built = extension_tool(["build", "--source-dir", str(source), "--output-filepath", str(target)])
    if built.returncode != 0 or not target.exists():
        raise RuntimeError(f"extension build failed:\n{built.stdout}{built.stderr}")
    checked = extension_tool(["validate", str(target)])
    if checked.returncode != 0:
        raise RuntimeError(f"extension validation failed:\n{checked.stdout}{checked.stderr}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output-dir", type=Path, default=ROOT / "dist", help="where the zip goes (default dist/)"
    )
    args = parser.parse_args(argv)
    try:
        path = build(args.output_dir)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"built and validated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
