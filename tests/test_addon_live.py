"""The live mesh in the viewport and Generate Variations, in real Blender (bpy wheel) against the real
service (its own process, tiny random diffusion model).

Live mesh: one temporary object, its mesh datablock refilled in place at each update (no new datablocks),
shown unlike a result, replaced by the result at the end and removed on cancel. Variations: N seeds
queue N jobs, nothing is imported until the artist picks one (or all, in a row), the History keeps them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import live_preview, operators, session, variation_ops  # noqa: E402
from blender_addon.client import BackendClient, LiveMesh, MeshArrays  # noqa: E402
from tests import test_addon_e2e as e2e  # noqa: E402
from tests.test_addon_e2e import Event, ModalHarness, object_names, wait_for_end  # noqa: E402

# The end-to-end module's fixtures: the add-on registered, a backend process, the scene's settings.
addon, backend_url, settings = e2e.addon, e2e.backend_url, e2e.settings


def sphere(n: int, step: int) -> LiveMesh:
    """A UV sphere with n rings and 2n segments, radius growing with `step` (vertices within [-1, 1])."""
    theta = np.linspace(0.0, np.pi, n + 1)[1:-1]
    phi = np.linspace(0.0, 2 * np.pi, 2 * n, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    r = 0.3 + 0.01 * step
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    verts = np.concatenate([ring, [[0, 0, 1], [0, 0, -1]]]).astype(np.float32) * r
    m = 2 * n
    faces = []
    for i in range(n - 2):
        for j in range(m):
            a, b, c, d = i * m + j, i * m + (j + 1) % m, (i + 1) * m + j, (i + 1) * m + (j + 1) % m
            faces += [[a, c, b], [b, c, d]]
    top, bottom = len(verts) - 2, len(verts) - 1
    faces += [[top, j, (j + 1) % m] for j in range(m)]
    last = (n - 2) * m
    faces += [[bottom, last + (j + 1) % m, last + j] for j in range(m)]
    colors = np.full((len(verts), 4), 255, np.uint8)
    colors[:, 0] = step % 256
    return LiveMesh(step=step, mesh=MeshArrays(verts, np.asarray(faces, np.int32), colors))


def datablocks() -> tuple[int, int, int]:
    return len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials)


def test_one_live_object_is_refilled_in_place_and_removed_with_its_data() -> None:
    live_preview.remove()
    before = datablocks()
    collection = bpy.context.scene.collection
    first = live_preview.show(
        collection, sphere(8, 1), job_id="job1", object_size=2.0, location=(1, 2, 3), rotation_z=0.5
    )
    name, mesh_name = first.name, first.data.name
    assert datablocks() == (before[0] + 1, before[1] + 1, before[2] + 1)
    for step, n in ((2, 12), (3, 6), (4, 16)):  # bigger and smaller meshes, one object
        live = sphere(n, step)
        obj = live_preview.show(
            collection, live, job_id="job1", object_size=2.0, location=(1, 2, 3), rotation_z=0.5
        )
        assert obj.name == name and obj.data.name == mesh_name
        assert datablocks() == (before[0] + 1, before[1] + 1, before[2] + 1)
        assert len(obj.data.vertices) == len(live.mesh.vertices)
        assert len(obj.data.polygons) == len(live.mesh.faces)
        assert obj[live_preview.LIVE_STEP_PROPERTY] == step
        srgb = np.empty(len(live.mesh.vertices) * 4, np.float32)
        obj.data.color_attributes["Color"].data.foreach_get("color_srgb", srgb)
        assert round(float(srgb[0]) * 255) == step
    assert tuple(obj.location) == (1, 2, 3) and obj.rotation_euler[2] == pytest.approx(0.5)
    assert max(obj.dimensions) == pytest.approx(2.0, rel=1e-4)
    # Plainly not a result: wireframe over a tinted, half-transparent surface; not rendered, not selectable.
    assert obj.show_wire and obj.hide_render and obj.hide_select
    material = obj.data.materials[0]
    assert material.diffuse_color[3] < 1.0
    # A second job's live mesh replaces the first one's object.
    other = live_preview.show(
        collection, sphere(6, 1), job_id="job2", object_size=1.0, location=(0, 0, 0), rotation_z=0.0
    )
    assert other[live_preview.LIVE_PROPERTY] == "job2"
    assert [o.name for o in live_preview.live_objects()] == [other.name]
    assert live_preview.remove() == 1
    assert datablocks() == before
    assert live_preview.remove() == 0


def run_until(harness: ModalHarness, done: Any, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        assert harness.timer_tick(bpy.context) == {"RUNNING_MODAL"}
        time.sleep(0.1)


def test_the_viewport_shows_the_growing_mesh_and_cancel_removes_it(settings: Any) -> None:
    settings.steps = 5000  # far longer than the test waits
    settings.live_every = 2
    bpy.context.scene.cursor.location = (0.0, 3.0, 0.0)
    before = object_names()
    harness = ModalHarness(bpy.context)
    run = harness._run
    assert run.fetch_live

    def live_object() -> Any:
        objects = list(live_preview.live_objects())
        assert len(objects) <= 1
        return objects[0] if objects else None

    run_until(harness, lambda: live_object() is not None)
    obj = live_object()
    first_step, mesh = obj[live_preview.LIVE_STEP_PROPERTY], obj.data.name
    assert obj[live_preview.LIVE_PROPERTY] == run.job_id
    assert tuple(obj.location) == (0.0, 3.0, 0.0)
    assert len(obj.data.vertices) == len(run.live_mesh.mesh.vertices) > 0
    n_meshes = len(bpy.data.meshes)
    run_until(harness, lambda: live_object()[live_preview.LIVE_STEP_PROPERTY] > first_step)
    assert live_object().data.name == mesh and len(bpy.data.meshes) == n_meshes  # refilled, not rebuilt
    assert object_names() - before == {obj.name}

    assert harness.modal(bpy.context, Event(type="ESC", value="PRESS")) == {"CANCELLED"}
    assert list(live_preview.live_objects()) == [] and object_names() == before
    assert mesh not in bpy.data.meshes
    client = BackendClient(session.STATE.settings_override.url)
    assert wait_for_end(client, run.job_id) == "cancelled"


def test_the_result_replaces_the_live_mesh(settings: Any) -> None:
    settings.steps = 6
    settings.live_every = 2
    settings.preview_every = 0
    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
    before = object_names()
    harness = ModalHarness(bpy.context)
    run = harness._run
    seen_live: set[str] = set()
    deadline = time.monotonic() + 300.0
    while True:
        result = harness.timer_tick(bpy.context)
        seen_live |= {o.name for o in live_preview.live_objects()}
        if result != {"RUNNING_MODAL"}:
            break
        assert time.monotonic() < deadline
    assert result == {"FINISHED"} and run.outcome == "succeeded"
    assert list(live_preview.live_objects()) == []
    (name,) = object_names() - before
    assert bpy.data.objects[name]["dreamsmith_job_id"] == run.job_id
    assert not seen_live & object_names()


def test_a_failed_run_removes_the_live_mesh(settings: Any, tmp_path: Path) -> None:
    settings.model = str(tmp_path / "no-such-model")  # the job fails while loading it
    before = object_names()
    harness = ModalHarness(bpy.context)
    run = harness._run
    # As if a live mesh had come before the failure.
    live_preview.show(
        bpy.context.scene.collection,
        sphere(6, 1),
        job_id=run.job_id,
        object_size=1.0,
        location=(0, 0, 0),
        rotation_z=0,
    )
    deadline = time.monotonic() + 120.0
    while (result := harness.timer_tick(bpy.context)) == {"RUNNING_MODAL"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert result == {"CANCELLED"} and run.outcome == "failed"
    assert list(live_preview.live_objects()) == [] and object_names() == before


def test_a_headless_run_asks_for_no_live_meshes(settings: Any) -> None:
    settings.live_every = 2
    before = object_names()
    assert bpy.ops.dreamsmith.generate() == {"FINISHED"}
    run = session.STATE.run
    assert run.request.live_every == 0 and not run.fetch_live
    assert len(object_names() - before) == 1


# ---- variations -----------------------------------------------------------------------------------------


def test_variations_queue_n_seeds_and_import_the_chosen_one_then_all_in_a_row(settings: Any) -> None:
    client = BackendClient(session.STATE.settings_override.url)
    jobs_before = {j.id for j in client.jobs()}
    settings.variations = 3
    settings.seed = 11
    settings.object_size = 1.0
    history_before = len(settings.history)
    bpy.context.scene.cursor.location = (5.0, 0.0, 0.0)
    before = object_names()

    assert bpy.ops.dreamsmith.generate_variations() == {"FINISHED"}
    new_jobs = [j for j in client.jobs() if j.id not in jobs_before]
    assert sorted(j.request["seed"] for j in new_jobs) == [11, 12, 13]
    assert all(j.state == "succeeded" for j in new_jobs)
    assert object_names() == before  # nothing imported until the artist picks
    variations = session.STATE.variations
    assert variations.succeeded() == [0, 1, 2]
    kept = list(settings.history)[history_before:]
    assert [(item.seed, item.object_name) for item in kept] == [(11, ""), (12, ""), (13, "")]
    assert all(item.n_vertices > 0 for item in kept)

    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)  # the set lands where it started
    assert bpy.ops.dreamsmith.import_variation(index=1) == {"FINISHED"}
    (chosen,) = object_names() - before
    obj = bpy.data.objects[chosen]
    assert obj["dreamsmith_seed"] == 12 and tuple(obj.location) == (5.0, 0.0, 0.0)
    assert obj["dreamsmith_job_id"] == variations.runs[1].job_id
    assert settings.history[history_before + 1].object_name == chosen
    assert len(settings.history) == history_before + 3  # importing adds no new entry

    assert bpy.ops.dreamsmith.import_variation(index=-1) == {"FINISHED"}  # all, in a row along X
    row = [bpy.data.objects[n] for n in object_names() - before - {chosen}]
    assert sorted((o["dreamsmith_seed"], tuple(o.location)) for o in row) == [
        (11, (5.0, 0.0, 0.0)),
        (12, (6.5, 0.0, 0.0)),
        (13, (8.0, 0.0, 0.0)),
    ]
    # Every variation is in the History, and "import again" works from there too.
    assert bpy.ops.dreamsmith.import_again(index=history_before) == {"FINISHED"}
    assert bpy.ops.dreamsmith.clear_variations() == {"FINISHED"}
    assert session.STATE.variations is None


class VariationsHarness(ModalHarness):
    modal = variation_ops.DREAMSMITH_OT_generate_variations.modal

    def __init__(self, context: Any) -> None:
        self.reports: list[tuple[set[str], str]] = []
        assert variation_ops._start(context, self, fetch_previews=True), self.reports  # type: ignore[arg-type]
        self._variations = session.STATE.variations


def test_variations_show_each_ones_progress_and_cancel_stops_them_all(settings: Any) -> None:
    settings.variations = 3
    settings.steps = 5000
    before = object_names()
    harness = VariationsHarness(bpy.context)
    variations = harness._variations
    assert session.STATE.running and operators.DREAMSMITH_OT_generate.poll(bpy.context) is False
    # One call per tick: the first job was submitted at the start, the two others take a tick each.
    for _ in range(2):
        assert harness.timer_tick(bpy.context) == {"RUNNING_MODAL"}
    assert all(run.job_id for run in variations.runs)
    deadline = time.monotonic() + 300.0
    while not (variations.runs[0].status and variations.runs[0].status.step > 0):
        assert time.monotonic() < deadline
        assert harness.timer_tick(bpy.context) == {"RUNNING_MODAL"}
        time.sleep(0.1)
    assert [run.status.state for run in variations.runs[1:]] == ["queued", "queued"]
    assert "0 of 3 variations done; seed" in variations.describe()
    assert 0.0 < variations.progress < 1.0 / 3.0

    assert bpy.ops.dreamsmith.cancel() == {"FINISHED"}  # the panel's Cancel button
    for _ in range(10):
        if harness.timer_tick(bpy.context) != {"RUNNING_MODAL"}:
            break
    assert variations.finished and [run.outcome for run in variations.runs] == ["cancelled"] * 3
    client = BackendClient(session.STATE.settings_override.url)
    assert [wait_for_end(client, run.job_id) for run in variations.runs] == ["cancelled"] * 3
    assert object_names() == before
    assert not session.STATE.running


def test_generate_variations_without_a_prompt_queues_nothing(settings: Any, tmp_path: Path) -> None:
    settings.prompt = "  "
    with pytest.raises(RuntimeError, match="Type a prompt first"):
        bpy.ops.dreamsmith.generate_variations()
    assert session.STATE.variations is None


def test_a_live_object_of_no_running_job_goes_after_a_file_load_undo_or_redo(tmp_path: Path) -> None:
    from blender_addon.runner import GenerationRun

    live_preview.remove()
    collection = bpy.context.scene.collection
    live_preview.show(
        collection, sphere(6, 1), job_id="old", object_size=1.0, location=(0, 0, 0), rotation_z=0
    )
    path = tmp_path / "saved-during-a-run.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    session.STATE = session.SessionState()
    bpy.ops.wm.open_mainfile(filepath=str(path))  # load_post
    assert list(live_preview.live_objects()) == []
    assert live_preview._after_undo_or_load in bpy.app.handlers.undo_post

    # The running job's own live object stays; any other goes.
    run = GenerationRun(BackendClient(), None, tmp_path, print)  # type: ignore[arg-type]
    run.job_id = "current"
    session.STATE.run = run
    collection = bpy.context.scene.collection
    live_preview.show(
        collection, sphere(6, 1), job_id="current", object_size=1.0, location=(0, 0, 0), rotation_z=0
    )
    stale = bpy.data.objects.new("ghost", bpy.data.meshes.new("ghost"))
    stale[live_preview.LIVE_PROPERTY] = "old"
    collection.objects.link(stale)
    live_preview._after_undo_or_load()  # what undo_post / redo_post run
    assert [o[live_preview.LIVE_PROPERTY] for o in live_preview.live_objects()] == ["current"]
    live_preview.remove()
    session.STATE = session.SessionState()


def test_bench_live_measures_both_sides_and_writes_json(tmp_path: Path) -> None:
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("bench_live", e2e.ROOT / "scripts" / "bench_live.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "live.json"
    bench.main(["--steps", "5", "--live-every", "2", "--repeat", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    backend = report["backend"]
    assert backend["live_meshes_per_run"] == 2 and backend["same_final_mesh"] is True
    assert backend["median_on_s"] > 0 and backend["median_off_s"] > 0 and 0 < backend["extract_share"] < 1
    for label in ("demo run's last live mesh", "dense 64^3 ball"):
        assert report["addon"][label]["faces"] > 0 and report["addon"][label]["update_median_s"] > 0
