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
from backend.service.guard import LOOPBACK_HOSTS

TOKEN_ENV = "DREAMSMITH_TOKEN"
DATA_DIR_ENV = "DREAMSMITH_DATA_DIR"


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


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    data_dir: Path | None = None,
    token: str | None = None,
    device: str = "auto",
) -> int:
    """Run the HTTP service until interrupted; returns the process exit code."""
    token = token or os.environ.get(TOKEN_ENV) or None
    loopback = is_loopback(host)
    if not loopback and not token:
        print(
            f"error: refusing to listen on {host} without a token: other machines could use this backend. "
            f"Pass --token or set {TOKEN_ENV} (or bind 127.0.0.1).",
            file=sys.stderr,
        )
        return 2
    if device not in DEVICES:
        print(f"error: unknown device {device!r}; choose one of {', '.join(DEVICES)}", file=sys.stderr)
        return 2
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda, but this PyTorch sees no CUDA GPU; use auto or cpu", file=sys.stderr)
            return 2
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the data directory {data_dir}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "torch" not in sys.modules:  # must be set before torch loads OpenMP
        # OpenMP threads busy-wait between parallel regions by default; on a CPU shared with Blender and
        # other programs that made CPU jobs up to 30x slower (scripts/bench_service.py). Users may override.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    print(f"Dreamsmith backend: data directory {data_dir}", flush=True)
    from backend.service.app import create_app

    app = create_app(data_dir, token=token, device=device, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    url_host = f"[{host}]" if ":" in host else host
    print(
        f"Dreamsmith backend: http://{url_host}:{port}/v1 ({'token required' if token else 'no token'}; "
        f"device {app.state.device_name})",
        flush=True,
    )
    server = uvicorn.Server(_uvicorn_config(app, host, port, log_level="info"))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return int(exc.code) if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    print("Dreamsmith backend: stopped", flush=True)
    return 0 if server.started else 1


def _uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # the add-on polls twice a second
        proxy_headers=False,  # nobody in front of us may rewrite the client address
        server_header=False,
        timeout_graceful_shutdown=5,
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

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._server = uvicorn.Server(_uvicorn_config(app, host, self.port))
        self._thread = threading.Thread(target=self._server.run, name="dreamsmith-http", daemon=True)

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

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
