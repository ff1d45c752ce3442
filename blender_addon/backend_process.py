"""Start and stop a local backend as a child process: `[python, -m, backend, serve, --port, N]`.

Its output goes to a log file, so when it dies at start-up the message can quote the reason.
Every process started here is stopped at exit (and on unregister) unless it was stopped before.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .client import BackendClient, BackendError, Health

_STARTED: list[BackendProcess] = []


class BackendProcess:
    def __init__(self, popen: subprocess.Popen[bytes], url: str, log_path: Path, command: list[str]) -> None:
        self.popen = popen
        self.url = url
        self.log_path = log_path
        self.command = command

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def exit_message(self) -> str:
        tail = self.log_tail(4)
        last = tail.splitlines()[-1] if tail else "no output"
        return (
            f"The local backend exited at start-up (code {self.popen.returncode}): {last}. "
            f"Full log: {self.log_path}"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask politely (SIGTERM), then insist (SIGKILL) after `timeout_s`."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout_s)
        if self in _STARTED:
            _STARTED.remove(self)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def backend_command(python: str, arguments: Sequence[str], port: int, extra: Sequence[str] = ()) -> list[str]:
    return [python, *arguments, "--port", str(port), *extra]


def start_backend(
    python: str,
    arguments: Sequence[str] = ("-m", "backend", "serve"),
    *,
    port: int,
    cwd: str | Path | None = None,
    log_path: Path,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> BackendProcess:
    """Launch the backend without waiting for it; see `wait_until_healthy`."""
    command = backend_command(python, arguments, port, extra)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                command,
                cwd=str(cwd) if cwd else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                # Its own process group: Ctrl-C in Blender's terminal should not kill it half-way.
                start_new_session=sys.platform != "win32",
            )
    except OSError as exc:
        raise BackendError(
            f"Could not start the backend with {command[0]!r} ({exc.strerror or exc}). Set the Python "
            "executable and backend folder in the add-on preferences."
        ) from exc
    proc = BackendProcess(popen, f"http://127.0.0.1:{port}", log_path, command)
    _STARTED.append(proc)
    return proc


def check_started(proc: BackendProcess, client: BackendClient) -> Health | None:
    """One short probe: Health once it answers, None while it is still starting; raises if it died."""
    if not proc.alive():
        raise BackendError(proc.exit_message())
    try:
        return client.health()
    except BackendError as exc:
        if exc.unreachable:
            return None
        raise


def wait_until_healthy(
    proc: BackendProcess, client: BackendClient, timeout_s: float = 120.0, interval_s: float = 0.25
) -> Health:
    """Block until `/v1/health` answers (scripts and background mode; the UI polls `check_started`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = check_started(proc, client)
        if health is not None:
            return health
        time.sleep(interval_s)
    proc.stop()
    raise BackendError(
        f"The local backend did not answer within {timeout_s:g} s and was stopped. Log: {proc.log_path}"
    )


def stop_all() -> None:
    for proc in list(_STARTED):
        proc.stop()


atexit.register(stop_all)
