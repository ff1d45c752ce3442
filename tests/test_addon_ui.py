"""Every panel of the Dreamsmith tab draws against the real scene (bpy wheel) in each state a user sees.

Blender has no window here, so panels draw into a recording stand-in for `UILayout` that accepts any
call but checks what the call names against real Blender: the layout function exists, the property
exists on the real settings, the operator is registered, the icon is a real icon, the progress factor
is within [0, 1]. A typo in a property or operator name therefore fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import panels, properties, session  # noqa: E402
from blender_addon.client import BackendClient, GenerationRequest, Health, JobStatus  # noqa: E402
from blender_addon.runner import GenerationRun  # noqa: E402

LAYOUT_FUNCTIONS = set(bpy.types.UILayout.bl_rna.functions.keys())
LAYOUT_PROPERTIES = set(bpy.types.UILayout.bl_rna.properties.keys())
ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())


class OperatorStandIn:
    def __init__(self, idname: str) -> None:
        module, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()  # raises if not registered
        object.__setattr__(self, "_props", set(rna.properties.keys()))
        object.__setattr__(self, "values", {})

    def __setattr__(self, name: str, value: Any) -> None:
        assert name in self._props, f"operator has no property {name!r}"
        self.values[name] = value


class RecordingLayout:
    def __init__(self, log: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "attrs", {})

    def __setattr__(self, name: str, value: Any) -> None:
        assert name in LAYOUT_PROPERTIES, f"UILayout has no property {name!r}"
        self.attrs[name] = value

    def __getattr__(self, name: str) -> Any:
        assert name in LAYOUT_FUNCTIONS, f"UILayout has no function {name!r}"

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append((name, args, kwargs))
            icon = kwargs.get("icon")
            assert icon is None or icon in ICONS, f"unknown icon {icon!r}"
            if name == "prop":
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"{data} has no property {prop!r}"
            elif name == "operator":
                op = OperatorStandIn(args[0])
                self._log.append(("operator-props", (args[0], op), {}))
                return op
            elif name == "progress":
                assert 0.0 <= kwargs["factor"] <= 1.0
            elif name == "template_list":
                listtype, _list_id, data, prop, active_data, active_prop = args[:6]
                assert hasattr(bpy.types, listtype), f"UIList {listtype} is not registered"
                assert prop in data.bl_rna.properties
                assert active_prop in active_data.bl_rna.properties
            elif name == "template_icon":
                assert isinstance(kwargs["icon_value"], int)
            return RecordingLayout(self._log)

        return call


def draw(panel_cls: type, context: Any) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    log: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    layout = RecordingLayout(log)
    fake_panel = type("FakePanel", (), {"layout": layout, "ui": panels.DreamsmithPanel.ui})()
    panel_cls.draw(fake_panel, context)
    return log


def draw_all(context: Any) -> dict[str, list[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
    drawn = {cls.__name__: draw(cls, context) for cls in panels.CLASSES if issubclass(cls, bpy.types.Panel)}
    assert set(drawn) == {
        "DREAMSMITH_PT_main",
        "DREAMSMITH_PT_method",
        "DREAMSMITH_PT_camera",
        "DREAMSMITH_PT_export",
        "DREAMSMITH_PT_variations",
        "DREAMSMITH_PT_backend",
        "DREAMSMITH_PT_history",
    }
    return drawn


def texts(log: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> str:
    return "\n".join(str(kw.get("text", "")) for _name, _args, kw in log)


def operators_drawn(log: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[str]:
    return [args[0] for name, args, _kw in log if name == "operator"]


@pytest.fixture(scope="module", autouse=True)
def addon() -> Any:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    yield
    blender_addon.unregister()


@pytest.fixture(autouse=True)
def fresh_state() -> Any:
    session.STATE = session.SessionState()
    settings = properties.settings_of(bpy.context.scene)
    settings.history.clear()
    yield


def test_idle_panels_offer_generate_and_every_setting() -> None:
    drawn = draw_all(bpy.context)
    main = drawn["DREAMSMITH_PT_main"]
    assert "dreamsmith.generate" in operators_drawn(main)
    assert "dreamsmith.cancel" not in operators_drawn(main)
    assert not any(name == "progress" for name, _a, _k in main)
    shown = {args[1] for log in drawn.values() for name, args, _k in log if name == "prop"}
    expected = {
        p.identifier
        for p in properties.DreamsmithSettings.bl_rna.properties
        if p.identifier not in ("rna_type", "name", "history", "history_index", "method_name")
    }
    assert expected <= shown, f"settings missing from the panels: {expected - shown}"
    assert "No generations in this file yet" in texts(drawn["DREAMSMITH_PT_history"])
    assert "Backend not checked yet" in texts(drawn["DREAMSMITH_PT_backend"])


def test_running_generation_shows_progress_eta_preview_and_cancel() -> None:
    run = GenerationRun(
        BackendClient(), GenerationRequest(prompt="a red cube"), cache_dir=".", import_result=print
    )
    run.job_id = "job1"
    run.status = JobStatus(
        id="job1", state="running", phase="optimizing", step=3, steps=10, eta_s=75.0, loss=0.5
    )
    session.STATE.run = run
    session.STATE.preview_icon_id = 42
    main = draw_all(bpy.context)["DREAMSMITH_PT_main"]
    assert "dreamsmith.cancel" in operators_drawn(main)
    assert "dreamsmith.generate" not in operators_drawn(main)
    (progress,) = [kw for name, _a, kw in main if name == "progress"]
    assert progress["factor"] == pytest.approx(0.3)
    assert progress["text"] == "optimizing 3/10, about 1 min 15 s left"
    assert [kw["icon_value"] for name, _a, kw in main if name == "template_icon"] == [42]


def test_errors_are_shown_in_plain_words_with_a_dismiss_button() -> None:
    message = (
        "Dreamsmith backend is not reachable at http://127.0.0.1:1: start it from the add-on preferences"
    )
    session.STATE.last_error = message
    main = draw_all(bpy.context)["DREAMSMITH_PT_main"]
    shown = " ".join(t.strip() for t in texts(main).splitlines() if t.strip())
    assert message in shown
    assert "dreamsmith.dismiss_message" in operators_drawn(main)


def test_backend_status_and_missing_camera_warning() -> None:
    session.STATE.set_health(Health("0.1.0", "cpu", ["tp-sds"], [], "tp-sds", "demo", [], 0))
    properties.settings_of(bpy.context.scene).front_from_camera = True
    try:
        drawn = draw_all(bpy.context)
    finally:
        properties.settings_of(bpy.context.scene).front_from_camera = False
    assert "version 0.1.0 on cpu" in texts(drawn["DREAMSMITH_PT_backend"])
    assert "The scene has no active camera" in texts(drawn["DREAMSMITH_PT_camera"])


def test_history_lists_generations_with_import_again_and_use_settings() -> None:
    settings = properties.settings_of(bpy.context.scene)
    for seed in (1, 2):
        properties.add_history(
            settings,
            GenerationRequest(prompt=f"thing {seed}", seed=seed),
            job_id=f"job{seed}",
            object_name=f"thing {seed}",
            n_vertices=100,
            n_faces=196,
            seconds=12.0,
        )
    assert settings.history_index == 1
    history = draw_all(bpy.context)["DREAMSMITH_PT_history"]
    assert any(name == "template_list" for name, _a, _k in history)
    props = {args[0]: args[1].values for name, args, _k in history if name == "operator-props"}
    assert props == {"dreamsmith.import_again": {"index": 1}, "dreamsmith.use_settings": {"index": 1}}

    log: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    row_owner = type("FakeList", (), {})()
    panels.DREAMSMITH_UL_history.draw_item(
        row_owner,
        bpy.context,
        RecordingLayout(log),
        settings,
        settings.history[0],
        0,
        settings,
        "history_index",
        0,
        0,
    )
    assert "thing 1" in texts(log) and "tp-sds #1" in texts(log)


def test_use_these_settings_restores_a_stored_request() -> None:
    settings = properties.settings_of(bpy.context.scene)
    request = GenerationRequest(prompt="a blue chair", method="asd", steps=321, seed=99, guidance_scale=7.5)
    request.camera.elevation_deg = (0.0, 30.0)
    request.export.texture = "uv"
    request.export.auto_level = "density"
    properties.add_history(
        settings, request, job_id="j", object_name="o", n_vertices=1, n_faces=1, seconds=1.0
    )
    settings.prompt = "something else"
    assert bpy.ops.dreamsmith.use_settings(index=0) == {"FINISHED"}
    again = properties.request_from_settings(settings)
    assert again.to_json() == request.to_json()


def test_randomize_seed_changes_the_seed() -> None:
    settings = properties.settings_of(bpy.context.scene)
    seeds = set()
    for _ in range(3):
        assert bpy.ops.dreamsmith.randomize_seed() == {"FINISHED"}
        seeds.add(settings.seed)
    assert len(seeds) > 1


def test_variations_panel_shows_each_ones_progress_preview_and_import() -> None:
    from blender_addon.variations import VariationSet

    settings = properties.settings_of(bpy.context.scene)
    idle = draw_all(bpy.context)["DREAMSMITH_PT_variations"]
    assert "dreamsmith.generate_variations" in operators_drawn(idle)
    assert f"Generate {settings.variations}" in texts(idle)

    request = GenerationRequest(prompt="a red cube", seed=7)
    variations = VariationSet(BackendClient(), request, 3, cache_dir=".", keep_result=lambda i, done: done)
    done, running, queued = variations.runs
    done.job_id, done.outcome, done.imported = "a", "succeeded", object()
    running.job_id = "b"
    running.status = JobStatus(id="b", state="running", phase="optimizing", step=5, steps=10)
    queued.job_id = "c"
    queued.status = JobStatus(id="c", state="queued", steps=10)
    session.STATE.variations = variations
    session.STATE.variation_icons = {0: (1, 17), 1: (2, 18)}
    drawn = draw_all(bpy.context)
    panel = drawn["DREAMSMITH_PT_variations"]
    assert [r.request.seed for r in variations.runs] == [7, 8, 9]
    assert all(f"Seed {seed}" in texts(panel) for seed in (7, 8, 9))
    bars = [kw for name, _a, kw in panel if name == "progress"]
    assert [b["factor"] for b in bars] == [pytest.approx(0.5), 0.0]
    assert bars[0]["text"] == "optimizing 5/10" and bars[1]["text"] == "waiting in the backend's queue..."
    assert [kw["icon_value"] for name, _a, kw in panel if name == "template_icon"] == [17, 18]
    props = [args[1].values for name, args, _k in panel if name == "operator-props"]
    assert {"index": 0} in props and {"index": -1} in props  # import this one; import all in a row
    # While they run, the main panel offers Cancel and the whole set's progress.
    main = drawn["DREAMSMITH_PT_main"]
    assert "dreamsmith.cancel" in operators_drawn(main)
    (total,) = [kw for name, _a, kw in main if name == "progress"]
    assert total["factor"] == pytest.approx(1.5 / 3) and total["text"].startswith("1 of 3 variations done")
