"""The service under faults (issue 13): a second service on a data folder, damaged job files, full or
read-only disks, bad start-up arguments, hostile connections, planted links, and cancels in every phase.

Most tests run the real service on a loopback port with the scripted engine of test_service.py; `serve`
itself runs as a subprocess where the behaviour is the command line's (exit status, one line on stderr).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import test_service
from test_service import FINISHED, TINY_JOB, FakeEngine, raw_get, stop

from backend.errors import ModelLoadError
from backend.fileio import write_bytes_atomic, write_json_atomic
from backend.service import BackgroundServer, create_app
from backend.service.datalock import DataDirBusy, DataDirLock
from backend.service.server import free_port

ROOT = Path(__file__).resolve().parents[1]
start = test_service.start  # the fixture: start(generate=..., data_dir=..., ...) -> Api


def run_serve(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m backend serve ARGS` to its end (it should refuse to start)."""
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/nonexistent-home"}
    return subprocess.run(
        [sys.executable, "-m", "backend", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**base, **(env or {})},
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def queued_job_on_disk(data: Path, job_id: str = "a" * 32) -> Path:
    folder = data / "jobs" / job_id
    write_json_atomic(folder / "request.json", {"prompt": "waiting", "steps": 2})
    write_json_atomic(folder / "state.json", {"state": "queued", "created_at": 1.0})
    return folder


def disk_state(folder: Path) -> str:
    return json.loads((folder / "state.json").read_text())["state"]


# ---- 1. one service per data folder; the port before the worker ------------------------------------------


def test_a_second_service_on_the_data_folder_exits_naming_it_and_changes_nothing(start, tmp_path) -> None:
    data = tmp_path / "data"
    engine = FakeEngine(step_s=0.05)
    api = start(engine, data_dir=data)
    running = api.submit("running", steps=2000)
    queued = api.submit("queued", steps=2)
    api.wait(running, lambda s: s["state"] == "running" and s["step"] >= 1)

    for port in (api.server.port, free_port()):  # the first one's port (cannot bind) or a free one
        proc = run_serve("--data-dir", str(data), "--port", str(port))
        assert proc.returncode == 2
        line = one_line(proc)
        assert str(data) in line and f"process {os.getpid()}" in line and "--data-dir" in line
    with pytest.raises(DataDirBusy):
        create_app(data, generate=FakeEngine(), device="cpu")

    # Nothing of the first service's was touched: its job still runs, the queued one waits for it.
    assert disk_state(data / "jobs" / running) == "running"
    assert disk_state(data / "jobs" / queued) == "queued"
    assert api.status(running)["state"] == "running" and engine.calls == ["running"]
    api.client.post(f"/v1/jobs/{running}/cancel")
    assert api.wait(queued)["state"] == "succeeded" and engine.calls == ["running", "queued"]
    stop(api)
    # Stopped, it gives the folder up.
    again = start(FakeEngine(), data_dir=data)
    assert {j["id"] for j in again.client.get("/v1/jobs").json()["jobs"]} == {running, queued}


def test_a_service_that_cannot_listen_runs_no_job(tmp_path) -> None:
    data = tmp_path / "data"
    waiting = queued_job_on_disk(data)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_serve("--data-dir", str(data), "--port", str(port))
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(proc)
    assert disk_state(waiting) == "queued"  # the worker never started
    DataDirLock(data).acquire().release()  # and the folder is free again


# ---- 6. bad start-up arguments: one line, exit 2, nothing created ------------------------------------------


def test_bad_port_and_unusable_data_folders_are_one_line(tmp_path, read_only_dir) -> None:
    data = tmp_path / "never-created"
    proc = run_serve("--port", "99999", "--data-dir", str(data))
    assert proc.returncode == 2 and "--port" in one_line(proc) and "99999" in one_line(proc)
    assert not data.exists()

    (tmp_path / "a-file").write_text("not a folder")
    for folder in (read_only_dir, tmp_path / "a-file" / "data"):
        proc = run_serve("--port", str(free_port()), "--data-dir", str(folder))
        assert proc.returncode == 2
        line = one_line(proc)
        assert "data directory" in line and str(folder) in line
    assert not (read_only_dir / "jobs").exists()


# ---- 7. the host the service was told to listen on --------------------------------------------------------


def test_a_service_on_another_loopback_address_answers_there(tmp_path) -> None:
    port = free_port("127.0.0.2")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.2", "--port", str(port)]
    cmd += ["--data-dir", str(tmp_path / "d")]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.2:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(url + "/v1/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert health.status_code == 200, health.text  # the URL it printed works
        assert raw_get(url, "/v1/health", host=f"localhost:{port}")[0] == 200
        assert raw_get(url, "/v1/health", host="attacker.example")[0] == 403
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
    assert f"http://127.0.0.2:{port}/v1" in rest


# ---- 8. tokens every client sends the same way ------------------------------------------------------------


@pytest.mark.parametrize("token", ["pässwort", "two words", "tab\there"])
def test_a_token_clients_would_send_differently_is_refused_at_start(token, tmp_path) -> None:
    data = tmp_path / "d"
    proc = run_serve("--token", token, "--data-dir", str(data), "--port", str(free_port()))
    assert proc.returncode == 2
    line = one_line(proc)
    assert "token" in line and "ASCII" in line and not data.exists()
    proc = run_serve("--data-dir", str(data), "--port", str(free_port()), env={"DREAMSMITH_TOKEN": token})
    assert proc.returncode == 2 and "DREAMSMITH_TOKEN" in one_line(proc)
    with pytest.raises(ValueError, match="ASCII"):
        create_app(data, token=token, generate=FakeEngine(), device="cpu")


def test_the_addon_client_and_the_service_agree_on_a_punctuated_token(start) -> None:
    from blender_addon.client import BackendClient, BackendError

    token = "a-b_c.d~e+f/g=h!#$%&*"
    api = start(FakeEngine(), token=token)
    assert BackendClient(api.server.url, token).health().version
    with pytest.raises(BackendError) as err:
        BackendClient(api.server.url, "pässwort")
    assert "token" in str(err.value) and "ASCII" in str(err.value)


# ---- 4. damaged job files ----------------------------------------------------------------------------------


def test_damaged_job_files_fail_alone_and_lose_nothing(start, tmp_path) -> None:
    data = tmp_path / "data"
    api = start(FakeEngine(), data_dir=data)
    good = api.submit("good", steps=2)
    assert api.wait(good)["state"] == "succeeded"
    mesh = api.client.get(f"/v1/jobs/{good}/mesh.npz").content
    stop(api)

    jobs = data / "jobs"
    request = b'{"prompt": "x"}'
    damaged = {
        "1" * 32: {"request.json": request, "state.json": b"[]"},
        "2" * 32: {"request.json": request, "state.json": b'{"state": "succeeded", "step": "abc"}'},
        "3" * 32: {"request.json": request, "state.json": b'{"state": "exploded"}'},
        "4" * 32: {"request.json": request, "state.json": b'{"state": "queued", "loss": "NaN"}'},
        "5" * 32: {"request.json": b"{not json", "state.json": b'{"state": "queued"}'},
        "6" * 32: {"request.json": b"[1, 2]"},
        "7" * 32: {},  # a folder and nothing in it
    }
    for job_id, files in damaged.items():
        (jobs / job_id).mkdir()
        for name, content in files.items():
            (jobs / job_id / name).write_bytes(content)
    huge = jobs / ("8" * 32)
    huge.mkdir()
    (huge / "request.json").write_bytes(b'{"prompt": "x"}')
    with open(huge / "state.json", "wb") as f:  # sparse: 2 GiB on paper, nothing on disk
        f.truncate(2 << 30)
    # What a killed writer leaves behind in a healthy folder.
    orphan = jobs / good / ".mesh.glb.x1y2z3.tmp"
    orphan.write_bytes(b"half a file")
    before = {p: p.read_bytes() for p in jobs.rglob("*") if p.is_file() and p.stat().st_size < 1 << 20}
    del before[orphan]

    api = start(FakeEngine(), data_dir=data)
    r = api.client.get("/v1/jobs")
    assert r.status_code == 200
    listed = {j["id"]: j for j in r.json()["jobs"]}
    assert set(listed) == {good, *damaged, huge.name}
    for job_id in [*damaged, huge.name]:
        status = api.status(job_id)
        assert status["state"] == "failed" and "its record is damaged" in status["error"], status
        assert str(jobs / job_id) in status["error"]
    assert "larger than" in api.status(huge.name)["error"]
    assert "step is not an integer" in api.status("2" * 32)["error"]
    assert api.client.get(f"/v1/jobs/{good}/mesh.npz").content == mesh
    assert not orphan.exists()
    # Nothing was rewritten; a damaged job can be deleted; the queue still runs.
    assert all(p.read_bytes() == content for p, content in before.items())
    assert api.client.delete(f"/v1/jobs/{'1' * 32}").status_code == 204 and not (jobs / ("1" * 32)).exists()
    assert api.wait(api.submit("after", steps=2))["state"] == "succeeded"


# ---- 5. full and unwritable disks --------------------------------------------------------------------------


class WriteFailsEngine(FakeEngine):
    """Writes mesh.glb, then the disk is full while writing mesh.npz."""

    def _run(self, cfg, out_dir: Path, on_progress, should_stop):  # noqa: ANN001
        if cfg.prompt != "disk full":
            return super()._run(cfg, out_dir, on_progress, should_stop)
        write_bytes_atomic(out_dir / "mesh.glb", b"glTF half a result")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "mesh.npz"))


def test_a_write_error_fails_the_job_alone_with_the_path_and_no_partial_files(start, tmp_path) -> None:
    api = start(WriteFailsEngine())
    bad = api.submit("disk full", steps=2)
    good = api.submit("fine", steps=2)
    failed = api.wait(bad)
    assert failed["state"] == "failed"
    assert "No space left on device" in failed["error"] and "mesh.npz" in failed["error"]
    assert "internal error" not in failed["error"]
    assert not (tmp_path / "data" / "jobs" / bad / "mesh.glb").exists()
    assert api.wait(good)["state"] == "succeeded"


def test_a_full_data_folder_is_said_before_the_optimization(start, small_disk, fill_disk) -> None:
    engine = FakeEngine()
    api = start(engine, data_dir=small_disk / "data")
    fill_disk(small_disk, 256 << 10)  # room for the job's files, not for a result
    job = api.submit("a red cube", steps=2)
    failed = api.wait(job)
    assert failed["state"] == "failed" and "MiB free" in failed["error"], failed
    assert engine.calls == []  # refused before the engine ran
    fill_disk(small_disk, 0)
    r = api.client.post("/v1/jobs", json={"prompt": "a red cube"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_error"
    assert api.client.get("/v1/health").status_code == 200


# ---- 10. idle and half-sent connections --------------------------------------------------------------------


def test_idle_and_half_sent_connections_do_not_starve_the_service(tmp_path) -> None:
    app = create_app(tmp_path / "d", generate=FakeEngine(), device="cpu", body_timeout_s=1.0)
    with BackgroundServer(app, max_connections=16, head_timeout_s=1.0) as server:
        address = ("127.0.0.1", server.port)
        idle = [socket.create_connection(address) for _ in range(300)]
        half = [socket.create_connection(address) for _ in range(20)]
        for s in half:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0")
        started = time.monotonic()
        r = httpx.get(server.url + "/v1/health", timeout=30)
        assert r.status_code == 200 and time.monotonic() - started < 10
        assert len(server._server.server_state.connections) <= 16 + 1

        # A body that stops half-way gets 408 once its time is up.
        with socket.create_connection(address, timeout=30) as s:
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"prompt": '
            )
            answer = b""
            while chunk := s.recv(65536):  # to the end: the service closes the connection after a 408
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b'"timeout"' in answer

        # Every idle or half-sent socket has been closed by the service (evicted, or after the head
        # timeout); reading one gives end of file (or a reset).
        for s in idle + half:
            s.settimeout(30)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            s.close()
        assert httpx.get(server.url + "/v1/health", timeout=30).status_code == 200


# ---- 11. links, /docs, the documented answers ---------------------------------------------------------------


def test_no_file_is_served_through_a_link_in_a_job_folder(start, tmp_path) -> None:
    data = tmp_path / "data"
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    api = start(FakeEngine(), data_dir=data)
    job = api.submit("a red cube", steps=2)
    assert api.wait(job)["state"] == "succeeded"
    glb = data / "jobs" / job / "mesh.glb"
    glb.unlink()
    glb.symlink_to(secret)
    r = api.client.get(f"/v1/jobs/{job}/mesh.glb")
    assert r.status_code == 404 and "private" not in r.text
    # A whole job folder that is a link is not loaded at all.
    linked = data / "jobs" / ("f" * 32)
    linked.symlink_to(data / "jobs" / job)
    stop(api)
    api = start(FakeEngine(), data_dir=data)
    assert [j["id"] for j in api.client.get("/v1/jobs").json()["jobs"]] == [job]
    assert "mesh.glb" not in api.status(job)["artifacts"]
    assert api.client.get(f"/v1/jobs/{job}/mesh.glb").status_code == 404


def test_no_page_loads_third_party_code_and_503_is_documented(start) -> None:
    api = start(FakeEngine())
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = api.client.get(path)
        assert r.status_code == 404 and "cdn" not in r.text.lower()
    schema = api.client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, path)


# ---- 2. every cancel is honoured --------------------------------------------------------------------------


class DeafExportEngine(FakeEngine):
    """Ignores the stop flag while "extracting mesh" (as one long library call would) until told to go on,
    then writes its results, or fails, as `outcome` says."""

    def __init__(self, outcome: str = "succeed") -> None:
        super().__init__()
        self.outcome = outcome
        self.in_export = threading.Event()
        self.go_on = threading.Event()

    def _run(self, cfg, out_dir: Path, on_progress, should_stop):  # noqa: ANN001
        on_progress(
            SimpleNamespace(
                phase="extracting mesh",
                step=cfg.steps,
                steps=cfg.steps,
                t=None,
                loss=None,
                eta_s=None,
                preview_png=None,
            )
        )
        self.in_export.set()
        assert self.go_on.wait(30)
        if self.outcome == "fail":
            raise ModelLoadError("the model folder went away")
        write_bytes_atomic(out_dir / "mesh.glb", b"glTF")
        write_bytes_atomic(out_dir / "mesh.npz", b"PK")


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
def test_a_cancel_accepted_while_running_ends_cancelled_whatever_the_engine_does(
    start, tmp_path, outcome
) -> None:
    engine = DeafExportEngine(outcome)
    api = start(engine)
    job = api.submit("a red cube", steps=2)
    assert engine.in_export.wait(30)
    r = api.client.post(f"/v1/jobs/{job}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "running"
    engine.go_on.set()
    final = api.wait(job)
    assert final["state"] == "cancelled" and final["error"] is None
    assert final["artifacts"] == [] and not (tmp_path / "data" / "jobs" / job / "mesh.glb").exists()


class SlowPriors:
    """A model that takes a minute to load (a large download): `get` blocks; nothing is ever loaded."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def get(self, model: str | None, device: Any) -> Any:
        self.release.wait(60)
        raise ModelLoadError("the download was abandoned")

    def loaded(self) -> list[str]:
        return []


def test_cancel_is_honoured_within_seconds_in_every_phase_of_the_real_engine(
    start, tiny_pixel_prior, tmp_path
) -> None:
    """Model loading (a load that would take a minute), one long training step (384 px), the density grid
    and marching cubes (512^3), and the UV texture bake: each cancel ends the job `cancelled` within a
    bound far below what the phase takes (generous: the machine is shared)."""
    pytest.importorskip("backend.engine.pipeline")
    bound_s = 15.0
    priors = SlowPriors()
    api = start(priors=priors)
    model = str(tiny_pixel_prior)

    def cancel_when(job: str, ready: Any) -> float:
        api.wait(job, lambda s: ready(s) or s["state"] in FINISHED, timeout=300)
        started = time.monotonic()
        assert api.client.post(f"/v1/jobs/{job}/cancel").status_code == 200
        final = api.wait(job, timeout=300)
        took = time.monotonic() - started
        assert final["state"] == "cancelled", final
        assert not {"mesh.glb", "mesh.npz", "texture.png"} & set(final["artifacts"])
        return took

    loading = api.submit("a red cube", **TINY_JOB)
    took = cancel_when(loading, lambda s: s["phase"] == "loading model")
    priors.release.set()
    assert took < bound_s, took

    stop(api)
    api = start(data_dir=tmp_path / "real")  # the real model cache from here on
    jobs = {
        "density grid and marching cubes": (
            {**TINY_JOB, "model": model, "export": {"mesh_resolution": 512}},
            lambda s: s["phase"] == "extracting mesh",
        ),
        "uv bake": (
            {
                **TINY_JOB,
                "model": model,
                "export": {"mesh_resolution": 64, "texture": "uv", "texture_size": 4096},
            },
            lambda s: s["phase"] == "texturing",
        ),
        # A training step at 384 px takes about 40 s on this CPU. The model is loaded by now, so three
        # seconds into the job its first step is running ("loading model" stays the phase until it ends).
        "one long step": (
            {**TINY_JOB, "model": model, "render_size": 384, "steps": 3},
            lambda s: s["state"] == "running" and s["elapsed_s"] > 3.0,
        ),
    }
    for name, (fields, ready) in jobs.items():
        took = cancel_when(api.submit("a red cube", **fields), ready)
        assert took < bound_s, (name, took)
    after = api.submit("a red cube", **{**TINY_JOB, "model": model})
    assert api.wait(after, timeout=300)["state"] == "succeeded"
