"""The add-on's copy of the settings against the backend's settings table, and its method menu.

Blender needs its own property declarations (ranges, defaults) for the panel; they must say what the
backend's table says, and the method menu must offer exactly what the running backend offers (a new
rule file on the backend appears in the menu with no add-on edit).
"""

from __future__ import annotations

from typing import Any

import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from backend.config import CameraConfig, ExportConfig, GenerationConfig  # noqa: E402
from backend.engine.methods import METHODS  # noqa: E402
from backend.settings import settings_of  # noqa: E402
from blender_addon import properties, session  # noqa: E402
from blender_addon.client import BackendClient, CameraRanges, ExportOptions, GenerationRequest  # noqa: E402

BACKEND = {s.key: s for s in settings_of(GenerationConfig)}
# add-on property -> (backend setting, "0 means the backend's default")
SCALARS = {
    "steps": ("steps", True),
    "seed": ("seed", False),
    "guidance_scale": ("guidance_scale", True),
    "render_size": ("render_size", True),
    "preview_every": ("preview_every", False),
    "live_every": ("live_every", False),
    "mesh_resolution": ("export.mesh_resolution", False),
    "texture_size": ("export.texture_size", False),
    "target_faces": ("export.target_faces", False),
    "smoothing": ("export.smoothing", False),
}
PAIRS = {
    "elevation": "camera.elevation_deg",
    "azimuth": "camera.azimuth_deg",
    "distance": "camera.distance",
    "fov": "camera.fov_deg",
}


@pytest.fixture(scope="module", autouse=True)
def addon() -> Any:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    yield
    blender_addon.unregister()


@pytest.fixture(autouse=True)
def no_health() -> Any:
    session.STATE.set_health(None)
    yield
    session.STATE.set_health(None)


def rna(name: str) -> Any:
    return properties.DreamsmithSettings.bl_rna.properties[name]


@pytest.mark.parametrize("prop, key_and_zero", SCALARS.items())
def test_panel_ranges_and_defaults_match_the_backend(prop: str, key_and_zero: tuple[str, bool]) -> None:
    key, zero_is_default = key_and_zero
    s, p = BACKEND[key], rna(prop)
    assert p.hard_max == pytest.approx(s.spec.hi), prop
    if zero_is_default:  # 0 leaves the field out of the request: the backend's default applies
        assert p.hard_min == 0 and p.default == 0
    else:
        assert p.hard_min == pytest.approx(s.spec.lo), prop
        assert p.default == pytest.approx(s.default), prop


@pytest.mark.parametrize("prop, key", PAIRS.items())
def test_camera_ranges_match_the_backend(prop: str, key: str) -> None:
    s = BACKEND[key]
    for end, default in zip(("min", "max"), s.default, strict=True):
        p = rna(f"{prop}_{end}")
        assert (p.hard_min, p.hard_max) == pytest.approx((s.spec.lo, s.spec.hi)), prop
        assert p.default == pytest.approx(default), prop


def test_texture_modes_surface_levels_and_text_lengths_match() -> None:
    assert {item.identifier for item in rna("texture").enum_items} == set(
        BACKEND["export.texture"].spec.allowed()
    )
    assert {item.identifier for item in rna("auto_level").enum_items} == set(
        BACKEND["export.auto_level"].spec.allowed()
    )
    assert rna("auto_level").default == BACKEND["export.auto_level"].default
    settings = properties.settings_of(bpy.context.scene)
    for name in ("prompt", "negative_prompt"):  # Blender cuts a longer text at the backend's limit
        setattr(settings, name, "x" * 600)
        assert len(getattr(settings, name)) == BACKEND[name].spec.max_chars
        setattr(settings, name, "")


def test_client_request_defaults_are_the_backends() -> None:
    # The camera ranges a request may carry (`api=True`); the tuning knobs (`--set` only) stay backend-side.
    api_camera = {
        key.removeprefix("camera."): s.default
        for key, s in BACKEND.items()
        if key.startswith("camera.") and s.spec.api
    }
    assert CameraRanges().__dict__ == api_camera
    assert set(api_camera) < set(CameraConfig().__dict__)
    export = ExportConfig()
    assert ExportOptions().__dict__ == {k: v for k, v in export.__dict__.items() if k != "threshold"}
    request = GenerationRequest(prompt="x")
    assert request.preview_every == GenerationConfig(prompt="x").preview_every
    assert request.live_every == GenerationConfig(prompt="x").live_every
    assert request.method == properties.DEFAULT_METHOD == BACKEND["method"].default


def menu(settings: Any) -> list[str]:
    return [item[0] for item in properties.method_items(settings, bpy.context)]


def test_method_menu_falls_back_to_a_builtin_list_without_a_backend() -> None:
    settings = properties.settings_of(bpy.context.scene)
    offered = menu(settings)
    assert offered[0] == "tp-sds" and set(offered) <= set(METHODS)
    assert settings.method == "tp-sds"


def test_method_menu_is_what_the_running_backend_offers(tmp_path: Any) -> None:
    from backend.service import BackgroundServer, create_app

    with BackgroundServer(create_app(tmp_path, generate=lambda *a, **k: None)) as server:
        health = BackendClient(server.url).health()
    session.STATE.set_health(health)
    settings = properties.settings_of(bpy.context.scene)
    assert menu(settings) == list(METHODS)  # CSD included: it came with a rule file, not an add-on edit
    settings.method = "tp-csd"
    assert settings.method == "tp-csd" and settings.method_name == "tp-csd"
    assert properties.request_from_settings(settings).method == "tp-csd"
    # Without the backend the stored choice stays (listed as not offered now), not silently replaced.
    session.STATE.set_health(None)
    assert "tp-csd" in menu(settings) and settings.method == "tp-csd"
    settings.method = "tp-sds"
