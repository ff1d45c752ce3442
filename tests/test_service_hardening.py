"""The service under faults (issue 13): a second service on a data folder, damaged job files, full or
read-only disks, bad start-up arguments, hostile connections, planted links, and cancels in every phase.

Most tests run the real service on a loopback port with the scripted engine of test_service.py; `serve`
itself runs as a subprocess where the behaviour is the command line's (exit status, one line on stderr).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import test_service
from test_service import FakeEngine, raw_get, stop

from backend.fileio import write_json_atomic
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


def test_no_page_loads_third_party_code_and_503_is_documented(start) -> None:
    api = start(FakeEngine())
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = api.client.get(path)
        assert r.status_code == 404 and "cdn" not in r.text.lower()
    schema = api.client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, path)
