"""Live meshes: the engine extracts a coarse mesh every `live_every` steps without changing the result, and
the service serves the latest one at GET /v1/jobs/{id}/live.npz (404 before the first and after the end).
"""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from backend.config import ExportConfig, GenerationConfig
from backend.engine.geometry.nerf import FieldConfig, RadianceField
from backend.engine.live import LIVE_RESOLUTION, LiveMesh, extract_live_mesh
from backend.engine.pipeline import Progress, generate
from backend.engine.prior import PriorCache
from backend.errors import GenerationCancelled
from backend.fileio import save_npz_atomic
from tests.test_service import FINISHED, start  # noqa: F401  (the `start` fixture)


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def check_mesh(arrays: dict[str, np.ndarray]) -> None:
    v, f, c = arrays["vertices"], arrays["faces"], arrays["colors"]
    assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 3 and len(v) > 0
    assert f.dtype == np.int32 and f.ndim == 2 and f.shape[1] == 3 and len(f) > 0
    assert f.min() >= 0 and f.max() < len(v)
    assert c.dtype == np.uint8 and c.shape == (len(v), 4)
    assert np.isfinite(v).all() and np.abs(v).max() <= 1.0 + 1e-6


def test_a_fresh_field_gives_a_closed_coloured_coarse_mesh() -> None:
    torch.manual_seed(0)
    field = RadianceField(FieldConfig.small())
    live = extract_live_mesh(field, 7, ExportConfig())
    assert live is not None and live.step == 7
    arrays = load_npz(live.npz_bytes())
    assert int(arrays.pop("step")) == 7
    check_mesh(arrays)
    # The initial blob is a ball of radius ~0.4: the live mesh is one, at the coarse grid's resolution.
    radius = np.linalg.norm(arrays["vertices"], axis=1)
    assert 0.3 < radius.mean() < 0.5
    assert len(arrays["faces"]) < 4 * LIVE_RESOLUTION**2  # coarse: a few thousand triangles


def test_an_empty_field_has_no_live_mesh() -> None:
    empty = SimpleNamespace(bound=1.0, density=lambda x: torch.zeros(len(x)), albedo=None)
    assert extract_live_mesh(empty, 1, ExportConfig()) is None


def config(model: Path, **kw: Any) -> GenerationConfig:
    return GenerationConfig(
        prompt="a red cube",
        model=str(model),
        steps=kw.pop("steps", 5),
        seed=3,
        render_size=32,
        samples_per_ray=16,
        preview_every=0,
        export=ExportConfig(mesh_resolution=32, target_faces=2000),
        **kw,
    )


def test_generate_hands_out_live_meshes_and_ends_with_the_same_mesh(
    tiny_pixel_prior: Path, tmp_path: Path
) -> None:
    priors = PriorCache()
    seen: list[Progress] = []
    generate(
        config(tiny_pixel_prior, live_every=2),
        tmp_path / "live",
        on_progress=seen.append,
        priors=priors,
        live_meshes=True,
    )
    live = [p for p in seen if p.live_mesh is not None]
    # Every 2 steps, but not after the last one (the result follows at once).
    assert [(p.step, p.live_mesh.step) for p in live] == [(2, 2), (4, 4)]  # type: ignore[union-attr]
    for p in live:
        check_mesh(load_npz(p.live_mesh.npz_bytes()))  # type: ignore[union-attr]
    # Without a caller that wants them there are none, and the live meshes changed nothing in the run.
    plain: list[Progress] = []
    generate(
        config(tiny_pixel_prior, live_every=2), tmp_path / "plain", on_progress=plain.append, priors=priors
    )
    assert not any(p.live_mesh is not None for p in plain)
    assert (tmp_path / "live" / "mesh.npz").read_bytes() == (tmp_path / "plain" / "mesh.npz").read_bytes()


def test_cancel_during_a_live_mesh_stops_the_run(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    asked_inside: list[bool] = []

    def stop_inside_the_live_mesh() -> bool:  # true only while a live mesh is being extracted
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "extract_live_mesh":
            frame = frame.f_back  # type: ignore[assignment]
        asked_inside.append(frame is not None)
        return frame is not None

    seen: list[Progress] = []
    with pytest.raises(GenerationCancelled):
        generate(
            config(tiny_pixel_prior, live_every=2, steps=50),
            tmp_path,
            on_progress=seen.append,
            should_stop=stop_inside_the_live_mesh,
            priors=PriorCache(),
            live_meshes=True,
        )
    assert asked_inside[-1] and max(p.step for p in seen) == 1  # stopped in step 2's live mesh


# ---- the service ----------------------------------------------------------------------------------------


class LiveEngine:
    """A fake engine that hands out a live mesh at each step and waits for the test between steps."""

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)

    def __call__(self, cfg, out_dir, on_progress=None, should_stop=None, priors=None, **options):  # noqa: ANN001
        assert options.get("live_meshes") is True
        report = lambda phase, step, **kw: on_progress(  # noqa: E731
            SimpleNamespace(
                **{"t": None, "loss": None, "eta_s": None, "preview_png": None, "live_mesh": None, **kw},
                phase=phase,
                step=step,
                steps=cfg.steps,
            )
        )
        report("loading model", 0)
        for step in range(1, cfg.steps + 1):
            assert self.go.acquire(timeout=30)
            if should_stop():
                raise GenerationCancelled()
            n = step + 2  # a fan of `step` triangles around vertex 0, so each step's mesh differs
            verts = np.zeros((n, 3), np.float32)
            verts[1:, 0] = np.linspace(0.0, 0.5, n - 1)
            verts[1:, 1] = 0.5
            faces = np.array([[0, i, i + 1] for i in range(1, n - 1)], np.int32)
            colors = np.full((n, 4), 255, np.uint8)
            report("optimizing", step, live_mesh=LiveMesh(step, verts, faces, colors))
        assert self.go.acquire(timeout=30)
        save_npz_atomic(out_dir / "mesh.npz", vertices=np.zeros((3, 3), np.float32), faces=np.zeros((1, 3)))
        (out_dir / "mesh.glb").write_bytes(b"glTF")
        report("done", cfg.steps)


def test_live_npz_is_404_before_the_first_then_the_latest_step_then_gone(start) -> None:  # noqa: F811
    engine = LiveEngine()
    api = start(engine)
    job = api.submit("a red cube", steps=3)
    url = f"/v1/jobs/{job}/live.npz"
    api.wait(job, lambda s: s["state"] == "running")
    r = api.client.get(url)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert api.status(job)["live_step"] is None
    for step in (1, 2):
        engine.go.release()
        api.wait(job, lambda s, k=step: s["live_step"] == k)  # type: ignore[misc]
        r = api.client.get(url)
        assert r.status_code == 200 and r.headers["x-dreamsmith-step"] == str(step)
        assert r.headers["content-type"] == "application/octet-stream"
        assert int(r.headers["content-length"]) == len(r.content)
        arrays = load_npz(r.content)
        assert int(arrays.pop("step")) == step
        check_mesh(arrays)
        assert len(arrays["faces"]) == step  # the latest step's mesh, not an older one
    engine.go.release()
    engine.go.release()
    assert api.wait(job)["state"] == "succeeded"
    assert api.status(job)["live_step"] is None
    assert api.client.get(url).status_code == 404  # the result replaces it
    assert api.client.get("/v1/jobs/" + "0" * 32 + "/live.npz").status_code == 404
    assert api.client.post(url).status_code == 405
    # Not persisted: state.json knows nothing of live meshes.
    assert "live_step" not in (api.server.app.state.store.jobs_dir / job / "state.json").read_text()


def test_a_cancelled_job_drops_its_live_mesh(start) -> None:  # noqa: F811
    engine = LiveEngine()
    api = start(engine)
    job = api.submit("a red cube", steps=50)
    engine.go.release()
    api.wait(job, lambda s: s["live_step"] == 1)
    assert api.client.post(f"/v1/jobs/{job}/cancel").status_code == 200
    engine.go.release()
    deadline = time.monotonic() + 10
    while api.status(job)["state"] not in FINISHED:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert api.status(job)["state"] == "cancelled"
    assert api.client.get(f"/v1/jobs/{job}/live.npz").status_code == 404


def test_live_every_is_part_of_the_api_and_checked(start) -> None:  # noqa: F811
    api = start(LiveEngine())
    r = api.client.post("/v1/jobs", json={"prompt": "x", "live_every": -1})
    assert r.status_code == 422 and r.json()["error"]["field"] == "live_every"
    schema = api.client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/live.npz" in schema["paths"]
    fields = schema["components"]["schemas"]["JobRequest"]["properties"]
    assert fields["live_every"]["default"] == GenerationConfig(prompt="x").live_every
