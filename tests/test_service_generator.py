"""HTTP API v1 with generators: an Instant job (the `generator` field) and its warnings, a Refine job
(`init_job`) that starts from it, and the requests that are refused up front."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.engine.checkpoint import load_checkpoint
from backend.service import BackgroundServer, create_app

TINY = {"render_size": 16, "preview_every": 0, "export": {"mesh_resolution": 32}}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    server = BackgroundServer(create_app(tmp_path / "data", device="cpu")).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    server.stop()


def submit(api: httpx.Client, **body: Any) -> str:
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait(api: httpx.Client, job: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = api.get(f"/v1/jobs/{job}").json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            return dict(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_instant_job_then_a_refine_job_that_starts_from_its_field(
    api: httpx.Client, tiny_generator: Path, tiny_pixel_prior: Path, tmp_path: Path
) -> None:
    instant = submit(api, prompt="a red cube", generator=str(tiny_generator), **TINY)
    done = wait(api, instant)
    assert done["state"] == "succeeded", done["error"]
    assert done["warnings"] == [] and done["steps"] == 0
    assert {"mesh.glb", "mesh.npz", "preview.png"} <= set(done["artifacts"])

    refine = submit(api, prompt="a red cube", model=str(tiny_pixel_prior), steps=2, init_job=instant, **TINY)
    done = wait(api, refine)
    assert done["state"] == "succeeded", done["error"]
    assert done["request"]["init_job"] == instant and done["step"] == 2
    data = tmp_path / "data" / "jobs"
    started, refined = (
        load_checkpoint(data / instant / "field.pt"),
        load_checkpoint(data / refine / "field.pt"),
    )
    assert refined.geometry == started.geometry and refined.geometry["kind"] == "triplane"


def test_a_prompt_outside_the_training_set_succeeds_with_a_warning_in_the_status(
    api: httpx.Client, tiny_generator: Path
) -> None:
    job = submit(api, prompt="a marble teapot", generator=str(tiny_generator), **TINY)
    done = wait(api, job)
    assert done["state"] == "succeeded", done["error"]
    (warning,) = done["warnings"]
    assert "outside the generator's training set" in warning and "'teapot'" in warning
    assert api.get(f"/v1/jobs/{job}/mesh.npz").status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"generator": "/no/such/generator"}, "generator", "is not a generator folder"),
        ({"generator": ""}, "generator", ""),
        ({"init_job": "0" * 32}, "init_job", "no job with this id"),
        ({"init_job": "not-a-job"}, "init_job", ""),
    ],
)
def test_bad_generator_or_init_job_is_refused_naming_the_field(
    api: httpx.Client, body: dict[str, Any], field: str, message: str
) -> None:
    r = api.post("/v1/jobs", json={"prompt": "a red cube", **body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and message in error["message"]
    assert api.get("/v1/jobs").json() == {"jobs": []}


def test_refine_from_a_failed_job_is_refused(api: httpx.Client, tmp_path: Path) -> None:
    failed = submit(api, prompt="a red cube", model=str(tmp_path / "no-model"), **TINY)
    assert wait(api, failed)["state"] == "failed"
    r = api.post("/v1/jobs", json={"prompt": "a red cube", "init_job": failed})
    assert r.status_code == 422 and r.json()["error"]["field"] == "init_job"


def test_health_lists_the_built_in_generators(api: httpx.Client) -> None:
    generators = api.get("/v1/health").json()["generators"]  # the demo generator ships with the backend
    (demo,) = generators
    assert demo["name"] == "demo" and demo["prompts"] == 30 and "cube" in demo["vocabulary"]
