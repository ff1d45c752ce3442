"""End to end: the add-on in real Blender (bpy wheel) against the real service (`python -m backend serve`
in its own process on a free loopback port) with a tiny random diffusion model.

generate -> one object with the result's vertex count and a material; cancel (ESC in the modal operator,
or the Cancel button) -> the job is cancelled on the backend and nothing is imported; backend down or
stuck -> a clear error within a bounded time; the headless script starts its own backend and writes
.blend, .glb and .png.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import backend_process, operators, properties, session  # noqa: E402
from blender_addon.client import BackendClient, BackendError, read_mesh_npz  # noqa: E402
from blender_addon.preferences import BackendSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"steps": 2, "render_size": 32, "preview_every": 1, "mesh_resolution": 32, "target_faces": 5000}


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("service")
    proc = backend_process.start_backend(
        sys.executable,
        ["-m", "backend", "serve"],
        port=backend_process.free_port(),
        cwd=ROOT,
        log_path=folder / "backend.log",
        extra=["--data-dir", str(folder / "jobs"), "--device", "cpu"],
    )
    try:
        backend_process.wait_until_healthy(proc, BackendClient(proc.url), timeout_s=120.0)
    except BackendError as exc:
        pytest.fail(f"{exc}\n{proc.log_tail(30)}")
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module", autouse=True)
def addon() -> Iterator[None]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    yield
    blender_addon.unregister()


def use_backend(url: str, cache: Path) -> None:
    session.STATE = session.SessionState()
    session.STATE.settings_override = BackendSettings(url=url, cache_directory=str(cache))


@pytest.fixture
def settings(backend_url: str, tiny_latent_prior: Path, tmp_path: Path) -> Any:
    use_backend(backend_url, tmp_path / "cache")
    s = properties.settings_of(bpy.context.scene)
    s.prompt = "a red cube"
    s.model = str(tiny_latent_prior)
    s.texture = "vertex"
    for key, value in TINY.items():
        setattr(s, key, value)
    return s


def object_names() -> set[str]:
    return {o.name for o in bpy.data.objects}


def base_color_node(obj: Any) -> Any:
    principled = next(
        n for n in obj.data.materials[0].node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"
    )
    (link,) = principled.inputs["Base Color"].links
    return link.from_node


def test_generate_imports_the_result_with_its_vertex_count_and_a_material(
    settings: Any, tmp_path: Path
) -> None:
    before = object_names()
    bpy.context.scene.cursor.location = (2.0, 0.0, 0.0)
    assert bpy.ops.dreamsmith.generate() == {"FINISHED"}
    (name,) = object_names() - before
    obj = bpy.data.objects[name]
    assert name == "a red cube"
    job_id = obj["dreamsmith_job_id"]

    # The result as the backend serves it, fetched independently of the add-on.
    client = BackendClient(session.STATE.settings_override.url)
    assert client.job(job_id).state == "succeeded"
    arrays = read_mesh_npz(client.download(job_id, "mesh.npz", tmp_path / "check.npz"))
    assert len(arrays.vertices) > 0
    assert len(obj.data.vertices) == len(arrays.vertices)
    assert len(obj.data.polygons) == len(arrays.faces)
    srgb = np.empty(len(arrays.vertices) * 4, np.float32)
    obj.data.color_attributes["Color"].data.foreach_get("color_srgb", srgb)
    np.testing.assert_array_equal(np.round(srgb.reshape(-1, 4) * 255).astype(np.uint8), arrays.colors)
    assert base_color_node(obj).bl_idname == "ShaderNodeVertexColor"

    assert tuple(obj.location) == (2.0, 0.0, 0.0)
    assert max(obj.dimensions) == pytest.approx(settings.object_size, rel=1e-4)
    assert obj["dreamsmith_prompt"] == "a red cube"
    assert obj["dreamsmith_method"] == "tp-sds"
    assert obj["dreamsmith_model"] == settings.model
    assert obj["dreamsmith_seed"] == settings.seed
    assert '"steps": 2' in obj["dreamsmith_settings"]
    item = settings.history[-1]
    assert (item.job_id, item.object_name, item.n_vertices) == (job_id, name, len(arrays.vertices))

    # "Import again" builds a second copy from the cache, without a new job.
    assert bpy.ops.dreamsmith.import_again(index=len(settings.history) - 1) == {"FINISHED"}
    (copy,) = object_names() - before - {name}
    assert len(bpy.data.objects[copy].data.vertices) == len(arrays.vertices)


def test_uv_textured_result_gets_an_image_texture_material(settings: Any) -> None:
    settings.texture = "uv"
    settings.texture_size = 64
    before = object_names()
    assert bpy.ops.dreamsmith.generate() == {"FINISHED"}
    (name,) = object_names() - before
    obj = bpy.data.objects[name]
    node = base_color_node(obj)
    assert node.bl_idname == "ShaderNodeTexImage"
    assert tuple(node.image.size) == (64, 64)
    assert len(obj.data.uv_layers["UVMap"].uv) == 3 * len(obj.data.polygons)


def test_instant_then_refine_starts_from_the_instant_result(settings: Any, tiny_generator: Path) -> None:
    settings.generator = str(tiny_generator)
    settings.prompt = "a blue sphere"
    client = BackendClient(session.STATE.settings_override.url)
    before = object_names()
    assert bpy.ops.dreamsmith.instant() == {"FINISHED"}  # the panel's Instant button
    (name,) = object_names() - before
    instant = bpy.data.objects[name]
    instant_job = instant["dreamsmith_job_id"]
    assert instant["dreamsmith_generator"] == str(tiny_generator)
    status = client.job(instant_job)
    assert status.state == "succeeded" and status.request["generator"] == str(tiny_generator)
    assert status.steps == 0 and len(instant.data.vertices) > 0  # one forward pass, no optimization

    # Refine continues the selected Instant result (whatever the prompt box says now) with the panel's steps.
    settings.prompt = "something else"
    mesh_select_only(instant)
    assert operators.DREAMSMITH_OT_refine.poll(bpy.context)
    before = object_names()
    assert bpy.ops.dreamsmith.refine() == {"FINISHED"}
    (refined_name,) = object_names() - before
    refined = bpy.data.objects[refined_name]
    refine_job = client.job(refined["dreamsmith_job_id"])
    assert refine_job.state == "succeeded"
    assert refine_job.request["init_job"] == instant_job and refine_job.request["prompt"] == "a blue sphere"
    assert refine_job.request.get("generator") is None and refine_job.step == refine_job.steps == 2
    assert refined["dreamsmith_generator"] == "" and len(refined.data.vertices) > 0


def mesh_select_only(obj: Any) -> None:
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def test_refine_without_an_instant_result_is_not_offered(settings: Any) -> None:
    settings.history.clear()
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    assert not operators.DREAMSMITH_OT_refine.poll(bpy.context)


class Event(SimpleNamespace):
    type: str
    value: str


class ModalHarness(operators.TimedModal):
    """The Generate operator's modal code driven by hand (no event loop in background Blender)."""

    modal = operators.DREAMSMITH_OT_generate.modal
    _live_shown = 0

    def __init__(self, context: Any) -> None:
        self.reports: list[tuple[set[str], str]] = []
        run = operators._start(context, self, fetch_previews=True)  # type: ignore[arg-type]
        assert run is not None, self.reports
        self._run = run

    def report(self, level: set[str], message: str) -> None:
        self.reports.append((level, message))

    def timer_tick(self, context: Any) -> set[str]:
        self._last_tick = 0.0
        return self.modal(context, Event(type="TIMER", value="NOTHING"))


def wait_for_end(client: BackendClient, job_id: str, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = client.job(job_id).state
    while state not in ("cancelled", "failed", "succeeded") and time.monotonic() < deadline:
        time.sleep(0.2)
        state = client.job(job_id).state
    return state


def test_esc_stops_a_running_job_on_the_backend_and_imports_nothing(settings: Any) -> None:
    settings.steps = 5000  # far longer than the test waits
    before = object_names()
    harness = ModalHarness(bpy.context)
    run = harness._run
    client = BackendClient(session.STATE.settings_override.url)
    deadline = time.monotonic() + 300.0
    while not (run.status and run.status.state == "running"):
        assert time.monotonic() < deadline, "the job never started"
        assert harness.timer_tick(bpy.context) == {"RUNNING_MODAL"}
        time.sleep(0.2)
    assert harness.modal(bpy.context, Event(type="ESC", value="PRESS")) == {"CANCELLED"}
    assert run.outcome == "cancelled" and not session.STATE.running
    assert wait_for_end(client, run.job_id) == "cancelled"
    assert client.job(run.job_id).step < 5000
    assert object_names() == before
    assert ({"WARNING"}, "Dreamsmith: generation cancelled") in harness.reports


def test_cancel_button_stops_a_queued_job_and_imports_nothing(settings: Any) -> None:
    settings.steps = 5000
    before = object_names()
    harness = ModalHarness(bpy.context)
    assert bpy.ops.dreamsmith.cancel() == {"FINISHED"}  # the panel's Cancel button
    assert harness.timer_tick(bpy.context) == {"CANCELLED"}  # the next timer tick tells the backend
    client = BackendClient(session.STATE.settings_override.url)
    assert wait_for_end(client, harness._run.job_id) == "cancelled"
    assert object_names() == before


def test_backend_down_gives_a_clear_error_quickly(settings: Any, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{backend_process.free_port()}"
    use_backend(url, tmp_path)
    before = object_names()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Dreamsmith backend is not reachable at"):
        bpy.ops.dreamsmith.generate()
    assert time.monotonic() - started < 5.0
    assert session.STATE.last_error == (
        f"Dreamsmith backend is not reachable at {url}: start it from the add-on preferences or run "
        "`python -m backend serve`"
    )
    assert object_names() == before


def test_a_stuck_backend_gives_a_clear_error_within_the_timeout(settings: Any, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        use_backend(f"http://127.0.0.1:{listener.getsockname()[1]}", tmp_path)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="did not answer within 3 s"):
            bpy.ops.dreamsmith.generate()
        assert time.monotonic() - started < 8.0
    finally:
        listener.close()


def test_headless_script_starts_its_own_backend_and_writes_blend_glb_png(
    tiny_latent_prior: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "blender_generate.py"),
        "--",
        "--prompt", "a red cube",
        "--out", str(out / "scene.blend"),
        "--glb", str(out / "scene.glb"),
        "--render", str(out / "scene.png"),
        "--render-resolution", "64",
        "--render-samples", "4",
        "--model", str(tiny_latent_prior),
        "--steps", "2",
        "--render-size", "32",
        "--mesh-resolution", "32",
        "--url", f"http://127.0.0.1:{backend_process.free_port()}",  # nothing there: it starts one
        "--timeout", "300",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started a backend at" in done.stdout and "stopped the backend" in done.stdout
    pid = int(re.search(r"\(pid (\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for name in ("scene.blend", "scene.glb", "scene.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "scene.glb").read_bytes()[:4] == b"glTF"
    assert (out / "scene.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with bpy.data.libraries.load(str(out / "scene.blend")) as (data_from, _data_to):
        assert "a red cube" in data_from.objects
        assert "a red cube" in data_from.materials
