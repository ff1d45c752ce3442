"""The built extension zip installs through Blender's extension API, enables, and registers and
unregisters cleanly twice (bpy wheel, a temporary user repository)."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[1]
REPO = "dreamsmith_test_repo"
MODULE = f"bl_ext.{REPO}.dreamsmith"


def load_build_script() -> Any:
    spec = importlib.util.spec_from_file_location("build_addon", ROOT / "scripts" / "build_addon.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load_build_script().build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    prefs = bpy.context.preferences
    directory = tmp_path_factory.mktemp("extensions")
    repo = prefs.extensions.repos.new(name=REPO, module=REPO, custom_directory=str(directory), source="USER")
    yield repo
    if MODULE in prefs.addons:
        bpy.ops.preferences.addon_disable(module=MODULE)
    prefs.extensions.repos.remove(repo)


def registered() -> bool:
    return (
        hasattr(bpy.types.Scene, "dreamsmith")
        and hasattr(bpy.types, "DREAMSMITH_PT_main")
        and hasattr(bpy.types, "DREAMSMITH_OT_generate")
    )


def test_zip_is_built_by_blenders_tool_and_holds_only_the_addon(built_zip: Path) -> None:
    assert built_zip.name == "dreamsmith-0.1.0.zip"
    names = zipfile.ZipFile(built_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "client.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_build_refuses_an_invalid_manifest(tmp_path: Path) -> None:
    source = tmp_path / "addon"
    source.mkdir()
    for path in (ROOT / "blender_addon").glob("*.py"):
        (source / path.name).write_bytes(path.read_bytes())
    manifest = (ROOT / "blender_addon" / "blender_manifest.toml").read_text()
    (source / "blender_manifest.toml").write_text(manifest.replace('"Mesh"', '"Not A Tag"'))
    with pytest.raises(RuntimeError, match="Not A Tag"):
        load_build_script().build(tmp_path / "dist", source)


def test_zip_installs_enables_and_registers_and_unregisters_twice(built_zip: Path, user_repo: Any) -> None:
    result = bpy.ops.extensions.package_install_files(
        filepath=str(built_zip), repo=user_repo.module, enable_on_install=True
    )
    assert result == {"FINISHED"}
    assert (Path(user_repo.directory) / "dreamsmith" / "blender_manifest.toml").exists()
    assert MODULE in bpy.context.preferences.addons
    assert registered()
    assert bpy.context.scene.dreamsmith.method == "tp-sds"

    for _ in range(2):
        assert bpy.ops.preferences.addon_disable(module=MODULE) == {"FINISHED"}
        assert not registered()
        assert bpy.ops.preferences.addon_enable(module=MODULE) == {"FINISHED"}
        assert registered()
        # The operators work after re-registration.
        assert bpy.ops.dreamsmith.randomize_seed() == {"FINISHED"}

    addon_prefs = bpy.context.preferences.addons[MODULE].preferences
    assert addon_prefs.backend_url == "http://127.0.0.1:8765"
    assert addon_prefs.backend_arguments == "-m backend serve"

    # The installed add-on reads its own preferences (bl_idname = __package__).
    installed = sys.modules[f"{MODULE}.preferences"]
    addon_prefs.backend_url = "http://127.0.0.1:9"
    try:
        assert installed.backend_settings(bpy.context).url == "http://127.0.0.1:9"
    finally:
        addon_prefs.backend_url = "http://127.0.0.1:8765"


def test_preferences_draw_with_start_stop_and_status(user_repo: Any) -> None:
    from test_addon_ui import RecordingLayout, operators_drawn, texts

    if MODULE not in bpy.context.preferences.addons:
        pytest.skip("needs the installed add-on from the previous test")
    addon_prefs = bpy.context.preferences.addons[MODULE].preferences
    log: list[Any] = []

    class Proxy:
        layout = RecordingLayout(log)

        def __getattr__(self, name: str) -> Any:
            return getattr(addon_prefs, name)

    type(addon_prefs).draw(Proxy(), bpy.context)
    assert {"dreamsmith.start_backend", "dreamsmith.stop_backend", "dreamsmith.check_backend"} <= set(
        operators_drawn(log)
    )
    assert "Backend not checked yet" in texts(log)
