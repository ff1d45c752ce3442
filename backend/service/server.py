"""Running the service: `serve` for `python -m backend serve`, `BackgroundServer` for tests and benchmarks."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import uvicorn

from backend.config import DEVICES
from backend.service.connections import HEAD_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS, protocol_class
from backend.service.datalock import DataDirBusy, DataDirLock
from backend.service.guard import LOOPBACK_HOSTS, token_problem

TOKEN_ENV = "DREAMSMITH_TOKEN"
DATA_DIR_ENV = "DREAMSMITH_DATA_DIR"
MAX_PORT = 65535


def default_data_dir() -> Path:
    """The user's data directory: XDG on Linux, Application Support on macOS, LOCALAPPDATA on Windows."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "Dreamsmith"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Dreamsmith"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "dreamsmith"


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str) -> tuple[str, ...] | None:
    """Host header names a service bound to `host` answers: the loopback names plus the address it was told
    to listen on (127.0.0.2 is loopback too); None (any) off loopback, where the token guards instead."""
    if not is_loopback(host):
        return None
    return (*LOOPBACK_HOSTS, host.strip("[]").lower())


def _refusal(host: str, port: int, token: str | None, device: str) -> str | None:
    """Why `serve` must not start with these arguments (one line), or None. Checked before any file is made."""
    if not 1 <= port <= MAX_PORT:
        return f"--port must be between 1 and {MAX_PORT}, got {port}"
    if token is not None and (problem := token_problem(token)):
        return f"the token {problem} (from --token or {TOKEN_ENV})"
    if not is_loopback(host) and not token:
        return (
            f"refusing to listen on {host} without a token: other machines could use this backend. "
            f"Pass --token or set {TOKEN_ENV} (or bind 127.0.0.1)."
        )
    if device not in DEVICES:
        return f"unknown device {device!r}; choose one of {', '.join(DEVICES)}"
    return None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    data_dir: Path | None = None,
    token: str | None = None,
    device: str = "auto",
) -> int:
    """Run the HTTP service until interrupted; returns the process exit code.

    Start-up order matters: arguments are checked before anything is created; the data folder's lock is
    taken before any job file is read (a second service on the folder stops here); the port is bound
    before the worker starts, so a service that cannot listen never runs a job.
    """
    token = token or os.environ.get(TOKEN_ENV) or None
    if problem := _refusal(host, port, token, device):
        return _fail(problem)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return _fail("--device cuda, but this PyTorch sees no CUDA GPU; use auto or cpu")
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(data_dir).acquire()
    except DataDirBusy as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot use the data directory {data_dir}: {_reason(exc)}; pass a writable --data-dir")
    try:
        return _serve_locked(host, port, data_dir, lock, token, device)
    finally:
        lock.release()


def _serve_locked(
    host: str, port: int, data_dir: Path, lock: DataDirLock, token: str | None, device: str
) -> int:
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        return _fail(f"cannot listen on {host}:{port}: {_reason(exc)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "torch" not in sys.modules:  # must be set before torch loads OpenMP
        # OpenMP threads busy-wait between parallel regions by default; on a CPU shared with Blender and
        # other programs that made CPU jobs up to 30x slower (scripts/bench_service.py). Users may override.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    print(f"Dreamsmith backend: data directory {data_dir}", flush=True)
    from backend.service.app import create_app

    try:
        app = create_app(
            data_dir, token=token, device=device, allowed_hosts=allowed_hosts_for(host), data_lock=lock
        )
    except OSError as exc:
        sock.close()
        return _fail(f"cannot use the data directory {data_dir}: {_reason(exc)}; pass a writable --data-dir")
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{port}"
    lock.describe(url=url)
    print(
        f"Dreamsmith backend: {url}/v1 ({'token required' if token else 'no token'}; "
        f"device {app.state.device_name})",
        flush=True,
    )
    server = uvicorn.Server(_uvicorn_config(app, host, port, log_level="info"))
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits this way when its start-up fails
        return int(exc.code) if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        sock.close()
    print("Dreamsmith backend: stopped", flush=True)
    return 0 if server.started else 1


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), as uvicorn binds it; raises OSError (in use, no such address)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":  # as uvicorn: restart at once on a port left in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _uvicorn_config(
    app: Any,
    host: str,
    port: int,
    log_level: str = "warning",
    max_connections: int = MAX_CONNECTIONS,
    head_timeout_s: float = HEAD_TIMEOUT_S,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # the add-on polls twice a second
        proxy_headers=False,  # nobody in front of us may rewrite the client address
        server_header=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_S,
        # Idle and half-sent connections are closed, and their number is bounded (connections.py).
        http=protocol_class(max_connections, head_timeout_s),
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return cast(int, s.getsockname()[1])


class BackgroundServer:
    """The real service on a free loopback port, in a thread of this process (tests, benchmarks).

    with BackgroundServer(create_app(tmp, generate=fake)) as server:
        httpx.get(server.url + "/v1/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, **limits: Any) -> None:
        self.app = app
        self.host = host
        # Bound before the worker starts (as `serve` does), so a server that cannot listen runs no job.
        self._socket = bind_socket(host, port or 0)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = uvicorn.Server(_uvicorn_config(app, host, self.port, **limits))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="dreamsmith-http", daemon=True
        )

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
