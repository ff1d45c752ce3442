"""HTTP API v1 against the real service on a free loopback port (uvicorn in a thread of the test process).

Two engines: a scripted fake (exact control of step timing, failures and previews, for queue, cancel and
persistence behaviour) and the real engine with the tiny random latent model (end to end: submit, poll,
download and load the mesh, failure of a bad model path, cancel, restart).
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from backend.errors import DreamsmithError, GenerationCancelled
from backend.fileio import save_npz_atomic, write_bytes_atomic, write_json_atomic
from backend.service import BackgroundServer, create_app, default_data_dir, serve
from backend.service.guard import LOOPBACK_HOSTS
from backend.service.jobs import INTERRUPTED
from backend.service.server import free_port, is_loopback

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ("succeeded", "failed", "cancelled")
# As small as the API allows: a real job is then a few CPU-seconds per step plus one preview and export.
TINY_JOB = {"steps": 2, "render_size": 16, "preview_every": 2, "export": {"mesh_resolution": 16}}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


class FakeEngine:
    """Stands in for `backend.engine.pipeline.generate`: steps take `step_s`, previews every
    `preview_every` steps, prompts starting with "fail:" raise, and every call is recorded."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.calls: list[str] = []
        self.running = 0
        self.max_running = 0
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, cfg, out_dir, on_progress=None, should_stop=None, priors=None, **engine_options):  # noqa: ANN001
        with self.lock:
            self.calls.append(cfg.prompt)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return self._run(cfg, Path(out_dir), on_progress, should_stop)
        finally:
            with self.lock:
                self.running -= 1

    def _run(self, cfg, out_dir: Path, on_progress, should_stop):  # noqa: ANN001
        def report(phase: str, step: int, **kw: Any) -> None:
            defaults = {"t": None, "loss": None, "elapsed_s": 0.0, "eta_s": None, "preview_png": None}
            on_progress(SimpleNamespace(phase=phase, step=step, steps=cfg.steps, **{**defaults, **kw}))

        report("loading model", 0)
        if cfg.prompt.startswith("fail:"):
            kind = cfg.prompt.split(":", 1)[1]
            if kind == "oom":
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if kind == "bug":
                raise ZeroDivisionError("division by zero")
            raise DreamsmithError("the model folder /nowhere does not exist: check the path")
        for i in range(cfg.steps):
            if should_stop():
                raise GenerationCancelled()
            self.started.set()
            time.sleep(self.step_s)
            done = i + 1
            preview = png_bytes() if cfg.preview_every and done % cfg.preview_every == 0 else None
            report(
                "optimizing",
                done,
                t=900 - i,
                loss=1.0 / done,
                eta_s=self.step_s * (cfg.steps - done),
                preview_png=preview,
            )
        report("extracting mesh", cfg.steps)
        write_bytes_atomic(out_dir / "mesh.glb", b"glTF fake")
        save_npz_atomic(
            out_dir / "mesh.npz", vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]], np.int32)
        )
        write_bytes_atomic(out_dir / "preview.png", png_bytes((0, 200, 0)))
        report("done", cfg.steps)
        return SimpleNamespace(files={}, n_vertices=3, n_faces=1, seconds=0.0)


class Api:
    """A started service and an httpx client for it."""

    def __init__(self, server: BackgroundServer, token: str | None = None) -> None:
        self.server = server
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=server.url, headers=headers, timeout=30)

    def submit(self, prompt: str, **fields: Any) -> str:
        r = self.client.post("/v1/jobs", json={"prompt": prompt, **fields})
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "queued"
        return r.json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until: Callable[[dict], bool] | None = None, timeout: float = 120.0) -> dict:
        until = until or (lambda s: s["state"] in FINISHED)
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if until(status):
                return status
            assert time.monotonic() < deadline, f"timed out waiting; last status {status}"
            time.sleep(0.02)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """start(generate=..., data_dir=..., token=..., allowed_hosts=...) -> Api; every server stops at the end."""
    servers: list[BackgroundServer] = []

    def _start(
        generate: Any = None, data_dir: Path | None = None, token: str | None = None, **kw: Any
    ) -> Api:
        app = create_app(data_dir or tmp_path / "data", generate=generate, token=token, device="cpu", **kw)
        server = BackgroundServer(app).start()
        servers.append(server)
        return Api(server, token)

    yield _start
    for server in servers:
        server.stop()


def stop(api: Api) -> None:
    api.client.close()
    api.server.stop()


# ---- requests, validation, security ---------------------------------------------------------------------


def test_health_reports_device_methods_and_queue(start) -> None:
    api = start(FakeEngine())
    body = api.client.get("/v1/health").json()
    assert body["status"] == "ok" and body["device"] == "cpu"
    from backend.engine.methods import METHODS

    assert body["methods"] == list(METHODS) and body["default_method"] == "tp-sds"
    assert {"tp-sds", "sds", "asd", "tp-asd", "csd", "tp-csd"} <= set(body["methods"])
    details = {m["name"]: m for m in body["method_details"]}
    assert details["asd"]["guidance_scale"] == 7.5 and details["tp-sds"]["title"] == "TP-SDS"
    assert body["models"]["default"] == "demo" and body["queue"] == 0
    schema = api.client.get("/openapi.json").json()
    job_request = schema["components"]["schemas"]["JobRequest"]
    assert job_request["additionalProperties"] is False
    assert job_request["properties"]["steps"]["maximum"] == 20000


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "prompt"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "   "}, 422, "prompt"),
        ({"prompt": "x" * 501}, 422, "prompt"),
        ({"prompt": "a", "method": "magic"}, 422, "method"),
        ({"prompt": "a", "steps": 0}, 422, "steps"),
        ({"prompt": "a", "steps": 20001}, 422, "steps"),
        ({"prompt": "a", "steps": "10"}, 422, "steps"),
        ({"prompt": "a", "steps": 10.5}, 422, "steps"),
        ({"prompt": "a", "steps": True}, 422, "steps"),
        ({"prompt": 5}, 422, "prompt"),
        ({"prompt": "a", "seed": -1}, 422, "seed"),
        ({"prompt": "a", "render_size": 8}, 422, "render_size"),
        ({"prompt": "a", "guidance_scale": "high"}, 422, "guidance_scale"),
        ({"prompt": "a", "model": ""}, 422, "model"),
        ({"prompt": "a", "colour": "red"}, 422, "colour"),
        ({"prompt": "a", "batch_size": 2}, 422, "batch_size"),  # engine-internal, not part of the API
        ({"prompt": "a", "lr_grid": 1.0}, 422, "lr_grid"),
        ({"prompt": "a", "camera": {"distance": [3, 2]}}, 422, "camera.distance"),
        ({"prompt": "a", "camera": {"fov_deg": [40]}}, 422, "camera.fov_deg"),
        ({"prompt": "a", "camera": {"elevation_deg": [0, 95]}}, 422, "camera.elevation_deg"),
        ({"prompt": "a", "camera": {"zoom": 1}}, 422, "camera.zoom"),
        ({"prompt": "a", "camera": []}, 422, "camera"),
        ({"prompt": "a", "export": {"texture": "ptex"}}, 422, "export.texture"),
        ({"prompt": "a", "export": {"mesh_resolution": 1024}}, 422, "export.mesh_resolution"),
        ({"prompt": "a", "export": {"threshold": 0.5}}, 422, "export.threshold"),
        ({"prompt": "a", "export": {"smoothing": 9}}, 422, "export.smoothing"),
        ({"prompt": "a", "export": {"smoothing": "some"}}, 422, "export.smoothing"),
        ([], 422, None),
        ("a red cube", 422, None),
    ],
)
def test_invalid_requests_get_a_4xx_json_error_naming_the_field(start, body, status, field) -> None:
    api = start(FakeEngine())
    r = api.client.post("/v1/jobs", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == field
    assert field is None or error["message"].startswith(field)
    assert "Traceback" not in r.text
    assert api.client.get("/v1/jobs").json() == {"jobs": []}


def test_malformed_json_oversized_body_and_wrong_content_type(start) -> None:
    api = start(FakeEngine())
    json_type = {"content-type": "application/json"}
    r = api.client.post("/v1/jobs", content=b'{"prompt": "a red', headers=json_type)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = api.client.post("/v1/jobs", content=b'{"prompt": "' + b"x" * 70_000 + b'"}', headers=json_type)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    # No content type: not parsed as JSON (a web page could send it without a CORS preflight).
    r = api.client.post("/v1/jobs", content=b'{"prompt": "a red cube"}')
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]
    r = api.client.post("/v1/jobs", content=b"\xff\xfe", headers=json_type)
    assert r.status_code == 400


def test_token_is_required_when_configured(start) -> None:
    api = start(FakeEngine(), token="s3cret-token")
    anonymous = httpx.Client(base_url=api.server.url)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        for method, path in (("GET", "/v1/health"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs")):
            r = anonymous.request(method, path, headers=headers, content=b"{not json")
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
    assert api.client.get("/v1/health").status_code == 200
    job = api.submit("a red cube", steps=2)
    assert api.wait(job)["state"] == "succeeded"


def test_non_loopback_bind_without_token_refuses_to_start(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("DREAMSMITH_TOKEN", raising=False)
    assert serve(host="0.0.0.0", port=1, data_dir=tmp_path, token=None) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "token" in err and "0.0.0.0" in err
    # The same through the command line the user runs.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode != 0
    assert "token" in proc.stderr and "DREAMSMITH_TOKEN" in proc.stderr
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_cli_serve_says_where_the_data_is_answers_and_stops_cleanly(tmp_path) -> None:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "backend", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        first = proc.stdout.readline()
        assert "data directory" in first and str(tmp_path / "d") in first
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(url + "/v1/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        r = httpx.post(url + "/v1/jobs", json={"prompt": ""})
        assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and "Traceback" not in rest and "stopped" in rest


def test_default_data_dir_is_the_users_data_directory(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("DREAMSMITH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert default_data_dir() == tmp_path / "dreamsmith"


def raw_get(url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (httpx would normalize '..')."""
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port), timeout=10) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host or address.netloc.decode()}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_path_traversal_and_unknown_artifacts_are_404(start) -> None:
    api = start(FakeEngine())
    job = api.submit("a red cube", steps=2)
    assert api.wait(job)["state"] == "succeeded"
    assert api.client.get(f"/v1/jobs/{job}/mesh.glb").status_code == 200
    for name in ("request.json", "state.json", "texture.png", "mesh.obj", "%2e%2e%2fstate.json"):
        r = api.client.get(f"/v1/jobs/{job}/{name}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", name
    for path in (
        f"/v1/jobs/{job}/../{job}/request.json",
        f"/v1/jobs/{job}/..%2frequest.json",
        f"/v1/jobs/..%2f..%2f{job}/mesh.glb",
        "/v1/jobs/../../../../etc/passwd",
        "/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/mesh.glb",
        f"/v1/jobs/{job.upper()}/mesh.glb",
        "/v1/jobs/0123/mesh.glb",
    ):
        status, body = raw_get(api.server.url, path)
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == "not_found", path


def test_loopback_service_refuses_foreign_hosts_and_web_page_origins(start) -> None:
    api = start(FakeEngine(), allowed_hosts=LOOPBACK_HOSTS)
    assert raw_get(api.server.url, "/v1/health")[0] == 200
    assert raw_get(api.server.url, "/v1/health", host=f"localhost:{api.server.port}")[0] == 200
    status, body = raw_get(api.server.url, "/v1/health", host="attacker.example")  # DNS rebinding
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
    r = api.client.post("/v1/jobs", json={"prompt": "a"}, headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    assert api.client.get("/v1/jobs").json() == {"jobs": []}


# ---- queue, progress, cancel, failures (fake engine) ----------------------------------------------------


def test_jobs_run_one_at_a_time_in_order_with_progress_and_previews(start) -> None:
    engine = FakeEngine(step_s=0.03)
    api = start(engine)
    first = api.submit("first", steps=20, preview_every=2)
    others = [api.submit(f"job {i}", steps=3, preview_every=0) for i in range(3)]
    assert api.client.get("/v1/health").json()["queue"] >= 3
    live = api.wait(first, lambda s: s["state"] == "running" and "preview.png" in s["artifacts"])
    assert live["phase"] == "optimizing" and 1 <= live["step"] <= 20 and live["steps"] == 20
    assert live["t"] is not None and live["loss"] > 0 and live["eta_s"] is not None
    r = api.client.get(f"/v1/jobs/{first}/preview.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (8, 8)
    assert [api.status(j)["state"] for j in others] == ["queued"] * 3
    for job in [first, *others]:
        assert api.wait(job)["state"] == "succeeded"
    assert engine.calls == ["first", "job 0", "job 1", "job 2"] and engine.max_running == 1
    done = api.status(first)
    assert done["phase"] == "done" and done["step"] == 20 and done["finished_at"] >= done["created_at"]
    assert set(done["artifacts"]) == {"preview.png", "mesh.glb", "mesh.npz"}
    listed = [j["id"] for j in api.client.get("/v1/jobs").json()["jobs"]]
    assert listed == [*reversed(others), first]  # newest first


def test_cancel_running_job_stops_within_one_step_and_next_runs(start) -> None:
    engine = FakeEngine(step_s=0.05)
    api = start(engine)
    long = api.submit("long", steps=2000)
    after = api.submit("after", steps=2)
    seen = api.wait(long, lambda s: s["step"] >= 2)
    r = api.client.post(f"/v1/jobs/{long}/cancel")
    assert r.status_code == 200 and r.json()["id"] == long
    at_cancel = r.json()["step"]
    t0 = time.monotonic()
    final = api.wait(long, timeout=10)
    assert final["state"] == "cancelled" and final["error"] is None
    assert time.monotonic() - t0 < 1.0  # one step is 0.05 s
    assert seen["step"] <= at_cancel and final["step"] <= at_cancel + 1
    assert api.wait(after)["state"] == "succeeded"
    assert engine.calls == ["long", "after"]
    # Cancelling again is harmless; a finished job cannot be cancelled.
    assert api.client.post(f"/v1/jobs/{long}/cancel").json()["state"] == "cancelled"
    r = api.client.post(f"/v1/jobs/{after}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert api.client.post("/v1/jobs/" + "0" * 32 + "/cancel").status_code == 404


def test_cancel_queued_job_never_runs(start) -> None:
    engine = FakeEngine(step_s=0.05)
    api = start(engine)
    running = api.submit("running", steps=20)
    queued = api.submit("queued", steps=2)
    api.wait(running, lambda s: s["state"] == "running")
    r = api.client.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert api.wait(running)["state"] == "succeeded"
    assert api.status(queued)["state"] == "cancelled" and engine.calls == ["running"]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("fail:model", "/nowhere does not exist"),
        ("fail:oom", "smaller render_size"),
        ("fail:bug", "internal error (ZeroDivisionError"),
    ],
)
def test_failed_job_has_a_message_and_the_next_job_runs(start, prompt, message) -> None:
    api = start(FakeEngine())
    bad = api.submit(prompt, steps=3)
    good = api.submit("a red cube", steps=3)
    failed = api.wait(bad)
    assert failed["state"] == "failed" and message in failed["error"]
    assert "Traceback" not in failed["error"] and failed["artifacts"] == []
    assert api.wait(good)["state"] == "succeeded"


def test_delete_finished_job_but_not_a_running_one(start, tmp_path) -> None:
    api = start(FakeEngine(step_s=0.05))
    running = api.submit("running", steps=200)
    api.wait(running, lambda s: s["state"] == "running")
    r = api.client.delete(f"/v1/jobs/{running}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    api.client.post(f"/v1/jobs/{running}/cancel")
    assert api.wait(running)["state"] == "cancelled"
    assert api.client.delete(f"/v1/jobs/{running}").status_code == 204
    assert api.client.get(f"/v1/jobs/{running}").status_code == 404
    assert api.client.delete(f"/v1/jobs/{running}").status_code == 404
    assert not (tmp_path / "data" / "jobs" / running).exists()


def test_restart_keeps_results_runs_queued_jobs_and_fails_interrupted_ones(start, tmp_path) -> None:
    data = tmp_path / "data"
    api = start(FakeEngine(step_s=0.05), data_dir=data)
    done = api.submit("done", steps=2)
    assert api.wait(done)["state"] == "succeeded"
    mesh = api.client.get(f"/v1/jobs/{done}/mesh.npz").content
    busy = api.submit("busy", steps=2000)
    waiting = api.submit("waiting", steps=2)
    api.wait(busy, lambda s: s["step"] >= 1)
    stop(api)  # graceful stop: the running job is interrupted, the queued one stays queued
    # A job that was running when the process died (state.json still says so).
    crashed = "c" * 32
    write_json_atomic(data / "jobs" / crashed / "request.json", {"prompt": "crashed", "steps": 5})
    write_json_atomic(
        data / "jobs" / crashed / "state.json", {"state": "running", "step": 3, "created_at": 1.0}
    )

    engine = FakeEngine()
    api = start(engine, data_dir=data)
    jobs = {j["id"]: j for j in api.client.get("/v1/jobs").json()["jobs"]}
    assert set(jobs) == {done, busy, waiting, crashed}
    assert jobs[done]["state"] == "succeeded"
    assert api.client.get(f"/v1/jobs/{done}/mesh.npz").content == mesh
    for job in (busy, crashed):
        assert jobs[job]["state"] == "failed" and jobs[job]["error"] == INTERRUPTED
    assert api.wait(waiting)["state"] == "succeeded" and engine.calls == ["waiting"]
    assert json.loads((data / "jobs" / crashed / "state.json").read_text())["state"] == "failed"


# ---- the real engine, tiny random model -----------------------------------------------------------------


@pytest.fixture
def real_engine() -> None:
    pytest.importorskip("backend.engine.pipeline", reason="engine not available")


def test_real_engine_fail_cancel_succeed_download_and_restart(
    start, real_engine, tiny_latent_prior, tmp_path
) -> None:
    """One queue as a user sees it: a bad model path fails, a long job is cancelled mid-run, the next
    job succeeds with a mesh that loads; after a restart all three are listed and the mesh downloads."""
    import trimesh

    data = tmp_path / "data"
    model = str(tiny_latent_prior)
    api = start(data_dir=data)
    missing = api.submit("a red cube", **{**TINY_JOB, "model": str(tmp_path / "no-such-model")})
    long = api.submit("a blue sphere", **{**TINY_JOB, "model": model, "steps": 5000})
    job = api.submit("a red cube", **{**TINY_JOB, "model": model})

    failed = api.wait(missing)
    assert failed["state"] == "failed" and "no-such-model" in failed["error"]
    api.wait(long, lambda s: s["phase"] == "optimizing" and s["step"] >= 1, timeout=300)
    at_cancel = api.client.post(f"/v1/jobs/{long}/cancel").json()["step"]
    cancelled = api.wait(long, timeout=300)
    assert cancelled["state"] == "cancelled" and cancelled["step"] <= at_cancel + 1
    assert api.wait(job, lambda s: "preview.png" in s["artifacts"], timeout=300)["step"] >= 2  # live preview
    done = api.wait(job, timeout=300)
    assert done["state"] == "succeeded", done["error"]
    assert done["step"] == done["steps"] == TINY_JOB["steps"] and done["loss"] is not None
    assert {"preview.png", "mesh.glb", "mesh.npz"} <= set(done["artifacts"])
    preview = api.client.get(f"/v1/jobs/{job}/preview.png")
    assert Image.open(io.BytesIO(preview.content)).format == "PNG"
    glb = api.client.get(f"/v1/jobs/{job}/mesh.glb")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    scene = trimesh.load(io.BytesIO(glb.content), file_type="glb")
    assert len(scene.geometry) >= 1
    npz = np.load(io.BytesIO(api.client.get(f"/v1/jobs/{job}/mesh.npz").content))
    assert npz["vertices"].dtype == np.float32 and npz["vertices"].shape[1] == 3
    assert npz["faces"].dtype == np.int32 and npz["faces"].shape[1] == 3
    assert npz["colors"].dtype == np.uint8 and npz["colors"].shape == (len(npz["vertices"]), 4)
    assert len(api.client.get("/v1/health").json()["models"]["loaded"]) == 1  # loaded once, kept
    stop(api)

    api = start(data_dir=data)
    listed = {j["id"]: j["state"] for j in api.client.get("/v1/jobs").json()["jobs"]}
    assert listed == {job: "succeeded", long: "cancelled", missing: "failed"}
    again = np.load(io.BytesIO(api.client.get(f"/v1/jobs/{job}/mesh.npz").content))
    assert np.array_equal(again["vertices"], npz["vertices"])
    assert api.client.get(f"/v1/jobs/{job}/mesh.glb").content == glb.content
