"""The add-on type-checks against fake-bpy-module (mypy, strict) and imports nothing beyond bpy, numpy
and the standard library."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"


def test_addon_type_checks_with_mypy_against_fake_bpy_module() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    try:
        importlib.metadata.version("fake-bpy-module")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fake-bpy-module is not installed")
    command = [sys.executable, "-m", "mypy", "--python-version", "3.11", "--strict", "blender_addon"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_addon_imports_only_bpy_numpy_and_the_standard_library() -> None:
    allowed = {"bpy", "numpy", "mathutils"} | set(sys.stdlib_module_names)
    for path in ADDON.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
