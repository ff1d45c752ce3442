"""The add-on's HTTP client and generation state machine (no Blender needed): every failure becomes one
plain-words BackendError within a bounded time, requests match the backend's own config reader, and a
run polls, fetches previews, downloads and imports, or cancels, one short call per tick."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.config import config_from_dict
from blender_addon import client as client_module
from blender_addon.client import (
    BackendClient,
    BackendError,
    CameraRanges,
    ExportOptions,
    GenerationRequest,
    JobStatus,
)
from blender_addon.runner import GenerationRun, run_blocking

Route = Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_server() -> Iterator[tuple[str, dict[str, Route], list[tuple[str, str, dict[str, str]]]]]:
    """A loopback HTTP server answering from `routes` ("METHOD /path" -> handler); records requests."""
    routes: dict[str, Route] = {}
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path, dict(self.headers)))
            route = routes.get(f"{self.command} {self.path}")
            if route is None:
                status, headers, body = 404, {}, b'{"error": {"code": "not_found", "message": "no route"}}'
            else:
                status, headers, body = route(self)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes, seen
    server.shutdown()
    server.server_close()


def json_route(status: int, data: Any) -> Route:
    def handle(_h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(data).encode()

    return handle


def test_unreachable_backend_fails_fast_with_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        BackendClient(url).health()
    assert time.monotonic() - started < 5.0
    assert err.value.unreachable
    assert str(err.value) == (
        f"Dreamsmith backend is not reachable at {url}: start it from the add-on preferences or run "
        "`python -m backend serve`"
    )


def test_a_backend_that_accepts_but_never_answers_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        client = BackendClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"did not answer within 0.5 s"):
            client.job("abc")
        assert time.monotonic() - started < 3.0
    finally:
        listener.close()


def test_backend_errors_become_plain_words(fake_server) -> None:
    url, routes, seen = fake_server
    routes["POST /v1/jobs"] = json_route(
        422,
        {"error": {"code": "invalid_request", "message": "must be between 1 and 20000", "field": "steps"}},
    )
    routes["GET /v1/health"] = json_route(401, {"error": {"code": "unauthorized", "message": "bad token"}})
    routes["GET /v1/jobs/gone"] = json_route(404, {"error": {"code": "not_found", "message": "no job gone"}})
    client = BackendClient(url, token="s3cret")

    with pytest.raises(BackendError) as err:
        client.submit(GenerationRequest(prompt="x"))
    assert (err.value.status, err.value.field) == (422, "steps")
    assert "refused the settings 'steps': must be between 1 and 20000" in str(err.value)
    with pytest.raises(BackendError, match="needs a token"):
        client.health()
    with pytest.raises(BackendError, match="does not have that job"):
        client.job("gone")
    assert all(headers.get("Authorization") == "Bearer s3cret" for _m, _p, headers in seen)


def test_something_else_on_the_port_is_named_as_such(fake_server) -> None:
    url, routes, _seen = fake_server
    routes["GET /v1/health"] = lambda _h: (200, {"Content-Type": "text/html"}, b"<html>hello</html>")
    with pytest.raises(BackendError, match="did not answer like a Dreamsmith backend"):
        BackendClient(url).health()
    with pytest.raises(BackendError, match="not valid"):
        BackendClient("localhost:8765")


def test_requests_are_what_the_backend_accepts() -> None:
    request = GenerationRequest(
        prompt="a red cube",
        negative_prompt="blurry",
        method="asd",
        steps=12,
        seed=3,
        guidance_scale=0.0,
        model="  ",
        render_size=32,
        camera=CameraRanges(elevation_deg=(0.0, 30.0), front_azimuth_deg=15.0),
        export=ExportOptions(
            mesh_resolution=48,
            texture="uv",
            texture_size=256,
            target_faces=5000,
            smoothing=0.5,
            auto_level="silhouette",
        ),
    )
    body = request.to_json()
    assert "guidance_scale" not in body and "model" not in body  # 0 / empty mean "backend default"
    cfg = config_from_dict(json.loads(json.dumps(body)))
    assert (cfg.method, cfg.steps, cfg.seed, cfg.render_size) == ("asd", 12, 3, 32)
    assert cfg.camera.elevation_deg == (0.0, 30.0) and cfg.camera.front_azimuth_deg == 15.0
    assert (cfg.export.texture, cfg.export.mesh_resolution, cfg.export.smoothing) == ("uv", 48, 0.5)
    assert cfg.export.auto_level == "silhouette"
    assert GenerationRequest.from_json(body).to_json() == body
    assert (
        config_from_dict(GenerationRequest(prompt="x", guidance_scale=20, model="m").to_json()).model == "m"
    )


def test_unset_steps_and_render_size_take_the_backends_defaults() -> None:
    body = GenerationRequest(prompt="a red cube").to_json()
    assert "steps" not in body and "render_size" not in body  # 0 means "backend default"
    cfg = config_from_dict(body)
    defaults = config_from_dict({"prompt": "a red cube"})
    assert (cfg.steps, cfg.render_size) == (defaults.steps, defaults.render_size)
    assert GenerationRequest.from_json(body).to_json() == body
    # The backend's stored request (defaults filled in) is what a result records, for reproduction.
    sent = GenerationRequest(prompt="a red cube", seed=4)
    ran = sent.resolved({**sent.to_json(), "steps": 321, "render_size": 48, "model": None})
    assert (ran.steps, ran.render_size, ran.seed, ran.model) == (321, 48, 4, None)
    assert GenerationRequest(prompt="x").resolved({}).steps == 0


class ScriptedClient:
    """Stands in for BackendClient: job states come from a script; every call is recorded."""

    def __init__(self, states: list[JobStatus], tmp: Path) -> None:
        self.states = states
        self.calls: list[str] = []
        self.tmp = tmp

    def submit(self, request: GenerationRequest) -> JobStatus:
        self.calls.append("submit")
        return JobStatus(id="j1", state="queued", steps=request.steps)

    def job(self, job_id: str) -> JobStatus:
        self.calls.append("job")
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def cancel(self, job_id: str) -> JobStatus:
        self.calls.append("cancel")
        return JobStatus(id=job_id, state="cancelled")

    def download(self, job_id: str, name: str, dest: Path, *, quick: bool = False) -> Path:
        self.calls.append(f"download {name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name == "mesh.npz":
            np.savez(dest, vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]], np.int32),
                     colors=np.zeros((3, 4), np.uint8))  # fmt: skip
        else:
            dest.write_bytes(b"png")
        return dest


def status(state: str, step: int = 0, artifacts: tuple[str, ...] = ()) -> JobStatus:
    return JobStatus(id="j1", state=state, phase="optimizing", step=step, steps=10, artifacts=list(artifacts))


def test_run_polls_fetches_a_preview_then_downloads_and_imports(tmp_path: Path) -> None:
    client = ScriptedClient(
        [
            status("running", 2, ("preview.png",)),
            status("running", 5, ("preview.png",)),
            status("succeeded", 10, ("preview.png", "mesh.npz", "mesh.glb", "texture.png")),
        ],
        tmp_path,
    )
    imported: list[Any] = []
    run = GenerationRun(client, GenerationRequest(prompt="x", steps=10), tmp_path, imported.append)  # type: ignore[arg-type]
    run_blocking(run, poll_interval_s=0.0)
    assert run.outcome == "succeeded" and run.error is None
    assert client.calls == [
        "submit",
        "job",
        "download preview.png",
        "job",  # a second preview waits for PREVIEW_INTERVAL_S
        "job",
        "download mesh.npz",
        "download texture.png",
    ]
    (done,) = imported
    assert (
        done.mesh_npz == tmp_path / "j1" / "mesh.npz" and done.texture_png == tmp_path / "j1" / "texture.png"
    )
    assert run.preview_version == 1 and run.preview_path == tmp_path / "j1" / "preview.png"


def test_run_cancel_tells_the_backend_and_imports_nothing(tmp_path: Path) -> None:
    client = ScriptedClient([status("running", 1)], tmp_path)
    imported: list[Any] = []
    run = GenerationRun(client, GenerationRequest(prompt="x"), tmp_path, imported.append)  # type: ignore[arg-type]
    run.start()
    assert run.tick() is False
    run.request_cancel()
    assert run.tick() is True
    assert run.outcome == "cancelled" and imported == []
    assert client.calls == ["submit", "job", "cancel"]


def test_failed_jobs_and_timeouts_end_with_a_message(tmp_path: Path) -> None:
    failed = JobStatus(id="j1", state="failed", error="Model folder /nope does not exist")
    run = GenerationRun(ScriptedClient([failed], tmp_path), GenerationRequest(prompt="x"), tmp_path, print)  # type: ignore[arg-type]
    run_blocking(run, poll_interval_s=0.0)
    assert (run.outcome, run.error) == ("failed", "Model folder /nope does not exist")

    client = ScriptedClient([status("running", 1)], tmp_path)
    run = GenerationRun(client, GenerationRequest(prompt="x"), tmp_path, print)  # type: ignore[arg-type]
    run_blocking(run, timeout_s=0.05, poll_interval_s=0.01)
    assert run.outcome == "failed" and "did not finish within 0.05 s" in (run.error or "")
    assert client.calls[-1] == "cancel"


class FlakyClient(ScriptedClient):
    """Misses `misses` status calls (as a busy backend would) before answering."""

    def __init__(self, states: list[JobStatus], tmp: Path, misses: int, error: BackendError) -> None:
        super().__init__(states, tmp)
        self.misses = misses
        self.error = error

    def job(self, job_id: str) -> JobStatus:
        if self.misses > 0:
            self.misses -= 1
            self.calls.append("job (no answer)")
            raise self.error
        return super().job(job_id)


def test_a_busy_backend_is_retried_but_a_dead_or_refusing_one_ends_the_run(tmp_path: Path) -> None:
    timeout = BackendError("did not answer within 3 s")
    done = status("succeeded", 10, ("mesh.npz",))
    imported: list[Any] = []
    client = FlakyClient([done], tmp_path, misses=2, error=timeout)
    run = GenerationRun(client, GenerationRequest(prompt="x"), tmp_path, imported.append)  # type: ignore[arg-type]
    run_blocking(run, poll_interval_s=0.0)
    assert run.outcome == "succeeded" and len(imported) == 1
    assert client.calls[:4] == ["submit", "job (no answer)", "job (no answer)", "job"]

    client = FlakyClient([done], tmp_path, misses=10**6, error=timeout)
    run = GenerationRun(client, GenerationRequest(prompt="x"), tmp_path, print)  # type: ignore[arg-type]
    run.retry_grace_s = 0.2
    started = time.monotonic()
    run_blocking(run, poll_interval_s=0.01)
    assert run.outcome == "failed" and run.error == "did not answer within 3 s"
    assert 0.2 <= time.monotonic() - started < 2.0

    gone = BackendError("The backend does not have that job", status=404)
    run = GenerationRun(
        FlakyClient([done], tmp_path, 1, gone), GenerationRequest(prompt="x"), tmp_path, print
    )  # type: ignore[arg-type]
    run.start()
    assert run.tick() is True and run.outcome == "failed"


# ---- answers that are slow, huge or malformed: still one BackendError, in bounded time and memory ----------


class RawServer:
    """A loopback server that answers every connection with `script(conn)`, for answers no HTTP library
    would send: dripped a byte at a time, endless, or lying about their size."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.script = script
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request
            with contextlib.suppress(OSError):  # the client gave up
                self.script(conn)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def drip(data: bytes, stop: threading.Event) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        for i in range(len(data)):
            if stop.is_set():
                return
            conn.sendall(data[i : i + 1])
            time.sleep(0.2)

    return script


HEALTH = json.dumps(
    {"status": "ok", "version": "1", "device": "cpu", "methods": [], "default_method": "tp-sds",
     "models": {"default": "demo", "loaded": []}, "queue": 0}
).encode()  # fmt: skip


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_server_that_drips_its_answer_is_given_up_at_the_deadline(part: str) -> None:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(HEALTH)}\r\n\r\n".encode()
    )
    stop = threading.Event()
    if part == "head":
        script = drip(head + HEALTH, stop)
    else:
        dripping = drip(HEALTH, stop)

        def script(conn: socket.socket) -> None:
            conn.sendall(head)
            dripping(conn)

    server = RawServer(script)
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match="did not answer within 1 s"):
            BackendClient(server.url, timeout=1.0).health()
        assert (
            time.monotonic() - started < 5.0
        )  # each byte came within the timeout: a per-read bound waits on
    finally:
        stop.set()
        server.close()


def test_answers_too_large_to_hold_are_refused_without_reading_them(tmp_path: Path, monkeypatch) -> None:
    def declares_300_mb(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{"
        )
        time.sleep(5)

    def streams_without_end(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[")
        for _ in range(1000):
            conn.sendall(b"0," * 32768)

    for script in (declares_300_mb, streams_without_end):
        server = RawServer(script)
        try:
            with pytest.raises(BackendError, match="sent more than 16 MiB"):
                BackendClient(server.url, timeout=20.0).health()
            monkeypatch.setattr(client_module, "MAX_DOWNLOAD_BYTES", 1 << 20)
            dest = tmp_path / "mesh.npz"
            with pytest.raises(BackendError, match="sent more than 1 MiB"):
                BackendClient(server.url, download_timeout=20.0).download("j1", "mesh.npz", dest)
            assert list(tmp_path.iterdir()) == []  # no file, no partial file
        finally:
            server.close()


GOOD_STATUS = {"id": "j1", "state": "running", "step": 1, "steps": 10, "artifacts": [], "request": {}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/health", {**json.loads(HEALTH), "queue": "3"}),
        ("/v1/health", {**json.loads(HEALTH), "models": ["demo"]}),
        ("/v1/health", {**json.loads(HEALTH), "methods": "tp-sds"}),
        ("/v1/health", {**json.loads(HEALTH), "version": 1}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "step": "abc"}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "step": True}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "elapsed_s": [1]}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "loss": "low"}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "artifacts": "mesh.npz"}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "request": []}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "state": "exploded"}),
        ("/v1/jobs/j1", {**GOOD_STATUS, "id": 7}),
        ("/v1/jobs", {"jobs": {"j1": GOOD_STATUS}}),
        ("/v1/jobs", {"jobs": [{**GOOD_STATUS, "eta_s": {}}]}),
    ],
)
def test_answers_with_wrong_field_types_are_a_backend_error(fake_server, path: str, body: Any) -> None:
    url, routes, _seen = fake_server
    routes[f"GET {path}"] = json_route(200, body)
    client = BackendClient(url)
    call = {"/v1/health": client.health, "/v1/jobs/j1": lambda: client.job("j1"), "/v1/jobs": client.jobs}[
        path
    ]
    with pytest.raises(BackendError, match="malformed"):
        call()


def test_a_run_fed_a_malformed_status_ends_with_a_message(fake_server, tmp_path: Path) -> None:
    url, routes, _seen = fake_server
    routes["POST /v1/jobs"] = json_route(201, {"id": "j1", "state": "queued"})
    routes["GET /v1/jobs/j1"] = json_route(200, {**GOOD_STATUS, "step": "abc"})
    run = GenerationRun(BackendClient(url), GenerationRequest(prompt="x"), tmp_path, print)
    run.retry_grace_s = 0.2
    run_blocking(run, poll_interval_s=0.01)
    assert run.outcome == "failed" and "malformed job status" in (run.error or "")


def test_a_token_the_backend_would_refuse_is_said_before_any_call() -> None:
    with pytest.raises(BackendError) as err:
        BackendClient(f"http://127.0.0.1:{free_port()}", token="pässwort")
    assert "token" in str(err.value) and "ASCII" in str(err.value)
    assert (
        BackendClient(f"http://127.0.0.1:{free_port()}", token="  a-b_c.d~e+f/g=  ").token == "a-b_c.d~e+f/g="
    )


class LiveClient(ScriptedClient):
    """Also serves live meshes: `live` maps a step to the bytes of its live.npz (None: a 404)."""

    def __init__(self, states: list[JobStatus], tmp: Path, live: dict[int, bytes | None]) -> None:
        super().__init__(states, tmp)
        self.live = live
        self.current: int | None = None

    def job(self, job_id: str) -> JobStatus:
        st = super().job(job_id)
        self.current = st.live_step
        return st

    def download(self, job_id: str, name: str, dest: Path, *, quick: bool = False) -> Path:
        if name != "live.npz":
            return super().download(job_id, name, dest, quick=quick)
        self.calls.append(f"download live.npz {self.current}")
        assert quick, "live meshes are fetched from the UI timer: the short deadline"
        data = self.live.get(self.current or 0)
        if data is None:
            raise BackendError("gone", status=404)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest


def live_npz(step: int, n: int = 3) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, vertices=np.zeros((n, 3), np.float32), faces=np.array([[0, 1, 2]], np.int32),
             colors=np.zeros((n, 4), np.uint8), step=np.int64(step))  # fmt: skip
    return buf.getvalue()


def live_status(state: str, step: int, live_step: int | None) -> JobStatus:
    st = status(state, step)
    st.live_step = live_step
    return st


def test_a_run_fetches_each_new_live_mesh_once_and_a_bad_one_is_skipped(tmp_path: Path, monkeypatch) -> None:
    import blender_addon.runner as runner

    monkeypatch.setattr(runner, "LIVE_INTERVAL_S", 0.0)
    client = LiveClient(
        [
            live_status("running", 1, None),
            live_status("running", 2, 2),
            live_status("running", 3, 2),  # the same live mesh: not fetched again
            live_status("running", 4, 4),  # a malformed file: skipped, the run goes on
            live_status("running", 6, 6),  # gone meanwhile (404): skipped
            live_status("running", 8, 8),
            status("succeeded", 10, ("mesh.npz",)),
        ],
        tmp_path,
        {2: live_npz(2), 4: b"not an npz", 6: None, 8: live_npz(8, n=5)},
    )
    shown: list[tuple[int, int]] = []
    run = GenerationRun(client, GenerationRequest(prompt="x"), tmp_path, print, fetch_live=True)  # type: ignore[arg-type]
    run.start()
    while not run.tick():
        if run.live_mesh is not None and (not shown or shown[-1][0] != run.live_version):
            shown.append((run.live_version, run.live_mesh.step))
    assert run.outcome == "succeeded" and run.error is None
    assert shown == [(1, 2), (2, 8)] and len(run.live_mesh.mesh.vertices) == 5  # type: ignore[union-attr]
    assert [c for c in client.calls if c.startswith("download live")] == [
        "download live.npz 2",
        "download live.npz 4",
        "download live.npz 6",
        "download live.npz 8",
    ]
    # A run that does not show live meshes never asks for them.
    client = LiveClient([live_status("running", 2, 2), status("succeeded", 10)], tmp_path, {2: live_npz(2)})
    run = GenerationRun(client, GenerationRequest(prompt="x"), tmp_path, print)  # type: ignore[arg-type]
    run_blocking(run, poll_interval_s=0.0)
    assert not any("live" in c for c in client.calls) and run.live_mesh is None


def test_read_live_npz_checks_the_step_and_the_arrays(tmp_path: Path) -> None:
    from blender_addon.client import read_live_npz

    good = tmp_path / "live.npz"
    good.write_bytes(live_npz(7))
    live = read_live_npz(good)
    assert live.step == 7 and live.mesh.faces.tolist() == [[0, 1, 2]]
    no_step = tmp_path / "no_step.npz"
    np.savez(no_step, vertices=np.zeros((3, 3), np.float32), faces=np.zeros((1, 3), np.int32))
    with pytest.raises(BackendError, match="no integer 'step'"):
        read_live_npz(no_step)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(live_npz(7)[:100])
    with pytest.raises(BackendError, match="could not be read"):
        read_live_npz(truncated)
