"""Fault drill of the service: does a user lose nothing, is every cancel honoured, does no traceback show?

    python scripts/fault_drill.py [--out bench_results/fault_drill.json] [--only kill,cancel,...]

Runs the real service (`python -m backend serve` subprocesses on loopback ports) with a tiny random model
and checks, scenario by scenario:

- kill:      kill -9 during each phase of a job (queued, loading model, optimizing, extracting mesh,
             texturing), then restart on the same folder: earlier results byte for byte, the killed job
             `failed` (interrupted), no partial result and no temporary file left, the queued job runs.
- two:       a second service on the same data folder (another port, and the first one's port): it exits
             with one line naming the folder and the holder; the first one's jobs run on untouched.
- cancel:    cancel in each phase (model load, one long training step, optimizing, density grid and
             marching cubes, UV bake): the job ends `cancelled`, no result files; time to cancel.
- damaged:   malformed job files planted in the folder (state `[]`, a wrong type, unreadable JSON, a 2 GiB
             state.json, a linked job folder, a linked artifact, a temporary file left by a killed writer):
             the service starts, lists the damaged jobs as failed, serves the healthy ones.
- disk:      the data folder and a CLI output folder on a full disk (a 2 MiB tmpfs where it can be mounted,
             else a read-only folder): the job fails before optimizing, a submit answers 503, the CLI says
             one line, nothing partial is left; freed, the service works on.

Prints a table (scenario, case, what happened, time, ok) and writes JSON. Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402

from backend.service.server import free_port  # noqa: E402

FINISHED = ("succeeded", "failed", "cancelled")
RESULTS = ("mesh.glb", "mesh.npz", "texture.png")
SCENARIOS = ("kill", "two", "cancel", "damaged", "disk")


@dataclass
class Row:
    scenario: str
    case: str
    observed: str
    seconds: float | None
    ok: bool


class Drill:
    def __init__(self, work: Path, model: str) -> None:
        self.work = work
        self.model = model
        self.rows: list[Row] = []

    def record(self, scenario: str, case: str, observed: str, ok: bool, seconds: float | None = None) -> None:
        observed = observed.replace(str(self.work), "$WORK")
        row = Row(scenario, case, observed, None if seconds is None else round(seconds, 2), bool(ok))
        self.rows.append(row)
        took = "" if seconds is None else f" ({seconds:.2f} s)"
        print(f"  [{'ok' if ok else 'FAIL'}] {scenario} / {case}: {observed}{took}", flush=True)

    def job(self, **fields: Any) -> dict[str, Any]:
        base = {
            "prompt": "a red cube",
            "model": self.model,
            "steps": 2,
            "render_size": 16,
            "preview_every": 1,
        }
        export = {"mesh_resolution": 16, **fields.pop("export", {})}
        return {**base, **fields, "export": export}


class Service:
    """`python -m backend serve` on its own port and data folder, in its own process group."""

    def __init__(self, data_dir: Path, port: int | None = None, wait: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Beside the work folder, not in the data folder: a full disk must not silence the log.
        logs = Path(tempfile.gettempdir()) / "dreamsmith-drill-logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"service-{self.port}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        env.pop("DREAMSMITH_TOKEN", None)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/v1/health").status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {self.log_path}")
            time.sleep(0.1)

    def submit(self, request: dict[str, Any]) -> str:
        r = self.client.post("/v1/jobs", json=request)
        r.raise_for_status()
        return r.json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, until: Callable[[dict], bool] | None = None, timeout: float = 600) -> dict:
        until = until or (lambda s: s["state"] in FINISHED)
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if until(status) or status["state"] in FINISHED or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.close_files()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.close_files()

    def close_files(self) -> None:
        self.client.close()
        self.log.close()


def serve_once(data_dir: Path, port: int) -> subprocess.CompletedProcess:
    """A `serve` expected to refuse to start: its exit status and output."""
    cmd = [sys.executable, "-m", "backend", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def on_disk(folder: Path, state: str, timeout: float = 10.0) -> bool:
    """Wait until the job's state.json says `state` (it is written just after the state is set)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((folder / "state.json").read_text())["state"] == state:
                return True
        time.sleep(0.05)
    return False


def leftovers(folder: Path) -> list[str]:
    """Temporary files and result files in a job folder that did not succeed."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(n for n in names if n.endswith(".tmp") or n in RESULTS)


def reason(message: str) -> str:
    """'could not write PATH: only 0.1 MiB free ...; free some space' -> 'only 0.1 MiB free ...'."""
    return message.split(": ", 1)[-1].split(";")[0]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 and "Traceback" not in proc.stderr else ""


# ---- scenarios ------------------------------------------------------------------------------------------


# Jobs whose named phase lasts long enough to be hit (on a 2-core CPU), and the test of being in it.
def phase_jobs(drill: Drill) -> dict[str, tuple[dict[str, Any], Callable[[dict], bool]]]:
    return {
        # An unreachable hub id: without a network the hub client retries for ~25 s. (With one, the load
        # fails at once; the table then shows the phase the job was in.)
        "loading model": (
            drill.job(model="dreamsmith-drill/not-downloadable"),
            lambda s: s["phase"] == "loading model",
        ),
        "optimizing": (drill.job(steps=5000, render_size=32), lambda s: s["phase"] == "optimizing"),
        "extracting mesh": (
            drill.job(export={"mesh_resolution": 512}),
            lambda s: s["phase"] == "extracting mesh",
        ),
        "texturing": (
            drill.job(export={"mesh_resolution": 64, "texture": "uv", "texture_size": 4096}),
            lambda s: s["phase"] == "texturing",
        ),
    }


def kill_drill(drill: Drill) -> None:
    data = drill.work / "kill" / "data"
    service = Service(data)
    done = service.submit(drill.job())
    assert service.wait(done)["state"] == "succeeded"
    kept = {name: service.client.get(f"/v1/jobs/{done}/{name}").content for name in ("mesh.glb", "mesh.npz")}
    cases = {"queued": (drill.job(), None), **phase_jobs(drill)}
    for phase, (request, ready) in cases.items():
        if ready is None:  # killed while queued behind a long job
            blocker = service.submit(drill.job(steps=5000, render_size=32))
            victim = service.submit(request)
            behind = service.submit(drill.job())
            service.wait(blocker, lambda s: s["state"] == "running")
        else:
            blocker, victim = None, service.submit(request)
            behind = service.submit(drill.job())
            service.wait(victim, ready)
            time.sleep(0.3)  # inside the phase, not at its start
        seen = service.status(victim)["phase"] or "queued"
        service.kill9()
        service = Service(data)
        listed = {j["id"]: j for j in service.client.get("/v1/jobs").json()["jobs"]}
        bytes_kept = all(service.client.get(f"/v1/jobs/{done}/{n}").content == b for n, b in kept.items())
        killed = blocker or victim
        interrupted = listed[killed]["state"] == "failed" and "interrupted" in (listed[killed]["error"] or "")
        left = leftovers(data / "jobs" / killed)
        tmp_anywhere = [p.name for p in (data / "jobs").rglob("*.tmp")]
        waiting_ok = all(
            service.wait(j)["state"] == "succeeded" for j in ([victim] if blocker else []) + [behind]
        )
        ok = seen == phase and bytes_kept and interrupted and not left and not tmp_anywhere and waiting_ok
        observed = (
            f"killed in '{seen}'; earlier result {'kept byte for byte' if bytes_kept else 'CHANGED'}; "
            f"killed job {listed[killed]['state']}; leftovers {left + tmp_anywhere or 'none'}; "
            f"queued jobs {'ran' if waiting_ok else 'did NOT run'}"
        )
        drill.record("kill -9 + restart", phase, observed, ok)
    service.stop()


def two_services_drill(drill: Drill) -> None:
    data = drill.work / "two" / "data"
    first = Service(data)
    done = first.submit(drill.job())
    assert first.wait(done)["state"] == "succeeded"
    mesh = first.client.get(f"/v1/jobs/{done}/mesh.npz").content
    long = first.submit(drill.job(steps=5000, render_size=32))
    queued = first.submit(drill.job())
    first.wait(long, lambda s: s["phase"] == "optimizing")
    for case, port in (
        ("second on a free port", free_port()),
        ("second on the first one's port", first.port),
    ):
        started = time.monotonic()
        proc = serve_once(data, port)
        line = one_line_error(proc)
        named = str(data) in line and f"process {first.proc.pid}" in line and first.url in line
        ok = proc.returncode == 2 and named
        drill.record(
            "two services",
            case,
            f"exit {proc.returncode}: {line or proc.stderr.strip()[-200:]}",
            ok,
            time.monotonic() - started,
        )
    step_before = first.status(long)["step"]
    time.sleep(1.5)
    running = first.status(long)
    untouched = (
        running["state"] == "running"
        and running["step"] > step_before
        and first.status(queued)["state"] == "queued"
        and first.client.get(f"/v1/jobs/{done}/mesh.npz").content == mesh
        and json.loads((data / "jobs" / long / "state.json").read_text())["state"] == "running"
    )
    drill.record(
        "two services",
        "first one afterwards",
        f"long job {running['state']} (step {step_before} -> {running['step']}), queued job "
        f"{first.status(queued)['state']}, finished result {'intact' if untouched else 'CHECK'}",
        untouched,
    )
    first.client.post(f"/v1/jobs/{long}/cancel")
    ran = first.wait(queued)["state"] == "succeeded"
    drill.record(
        "two services",
        "queued job after the cancel",
        "ran on the first service" if ran else "did not run",
        ran,
    )
    first.stop()


def cancel_drill(drill: Drill) -> None:
    data = drill.work / "cancel" / "data"
    service = Service(data)
    warm = service.submit(drill.job())  # imports the engine and loads the model once
    service.wait(warm)
    phases = phase_jobs(drill)
    cases = {
        "model load (hub, offline)": phases.pop("loading model"),
        # The model is loaded (warm-up): three seconds in, the first 512 px step (a minute) is running.
        "one long step (512 px)": (
            drill.job(render_size=512, steps=3),
            lambda s: s["state"] == "running" and s["elapsed_s"] > 3,
        ),
        **phases,
    }
    for case, (request, ready) in cases.items():
        job = service.submit(request)
        status = service.wait(job, ready)
        if status["state"] in FINISHED:
            drill.record(
                "cancel", case, f"the job {status['state']} before the cancel ({status['error']})", False
            )
            continue
        time.sleep(0.3)
        phase = service.status(job)["phase"]
        started = time.monotonic()
        answer = service.client.post(f"/v1/jobs/{job}/cancel")
        final = service.wait(job, timeout=300)
        took = time.monotonic() - started
        recorded = on_disk(data / "jobs" / job, final["state"])
        left = leftovers(data / "jobs" / job)
        ok = (
            answer.status_code == 200
            and final["state"] == "cancelled"
            and recorded
            and not left
            and took < 15
        )
        observed = (
            f"in '{phase}': {final['state']} ({'state.json too' if recorded else 'NOT on disk'}); "
            f"leftovers {left or 'none'}"
        )
        drill.record("cancel", case, observed, ok, took)
    service.stop()


def damaged_drill(drill: Drill) -> None:
    data = drill.work / "damaged" / "data"
    service = Service(data)
    good = service.submit(drill.job())
    assert service.wait(good)["state"] == "succeeded"
    mesh = service.client.get(f"/v1/jobs/{good}/mesh.npz").content
    service.stop()
    jobs = data / "jobs"
    secret = drill.work / "damaged" / "secret.txt"
    secret.write_text("private")
    planted = {
        "state.json is []": {"state.json": b"[]"},
        'step is "abc"': {"state.json": b'{"state": "succeeded", "step": "abc"}'},
        "request.json unreadable": {"request.json": b"{not json", "state.json": b'{"state": "queued"}'},
        "empty folder": {},
        "2 GiB state.json": {"state.json": None},
    }
    ids = {}
    for i, (case, files) in enumerate(planted.items(), 1):
        folder = jobs / (str(i) * 32)
        folder.mkdir()
        ids[case] = folder.name
        if files:
            (folder / "request.json").write_bytes(files.get("request.json", b'{"prompt": "x"}'))
        if "state.json" in files and files["state.json"] is None:
            with open(folder / "state.json", "wb") as f:
                f.truncate(2 << 30)
        elif "state.json" in files:
            (folder / "state.json").write_bytes(files["state.json"])
    (jobs / ("e" * 32)).symlink_to(jobs / good)  # a linked job folder
    glb = jobs / good / "mesh.glb"
    glb_bytes = glb.read_bytes()
    glb.unlink()
    glb.symlink_to(secret)  # a linked artifact
    orphan = jobs / good / ".mesh.npz.abc123.tmp"
    orphan.write_bytes(b"half")

    started = time.monotonic()
    service = Service(data)
    listing = service.client.get("/v1/jobs")
    drill.record(
        "damaged files",
        "service starts, GET /v1/jobs",
        f"HTTP {listing.status_code}",
        listing.status_code == 200,
        time.monotonic() - started,
    )
    listed = {j["id"]: j for j in listing.json()["jobs"]} if listing.status_code == 200 else {}
    for case, job_id in ids.items():
        job = listed.get(job_id, {})
        ok = job.get("state") == "failed" and "record is damaged" in (job.get("error") or "")
        drill.record(
            "damaged files", case, f"{job.get('state')}: {(job.get('error') or '').split(';')[0]}", ok
        )
    drill.record(
        "damaged files",
        "linked job folder",
        "not loaded" if "e" * 32 not in listed else "LOADED",
        "e" * 32 not in listed,
    )
    linked = service.client.get(f"/v1/jobs/{good}/mesh.glb")
    drill.record(
        "damaged files",
        "linked mesh.glb",
        f"HTTP {linked.status_code}",
        linked.status_code == 404 and "private" not in linked.text,
    )
    healthy = service.client.get(f"/v1/jobs/{good}/mesh.npz").content == mesh
    drill.record(
        "damaged files", "healthy job's result", "served byte for byte" if healthy else "CHANGED", healthy
    )
    drill.record(
        "damaged files",
        "temporary file of a killed writer",
        "removed" if not orphan.exists() else "left",
        not orphan.exists(),
    )
    after = service.submit(drill.job())
    ran = service.wait(after)["state"] == "succeeded"
    drill.record("damaged files", "a new job afterwards", "succeeded" if ran else "did not succeed", ran)
    service.stop()
    glb.unlink()
    glb.write_bytes(glb_bytes)


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[str]:
    """A 16 MiB tmpfs at `path` if this machine lets us mount one (root on Linux), else a read-only folder;
    yields which it is."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        sys.platform == "linux"
        and os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield "tmpfs" if mounted else "read-only"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    filler = folder / "filler"
    with open(filler, "ab") as f, contextlib.suppress(OSError):
        while (free := shutil.disk_usage(folder).free) > leave:
            f.write(b"\0" * min(65536, max(4096, free - leave)))
            f.flush()
    return filler


def disk_drill(drill: Drill) -> None:
    disk = drill.work / "disk" / "mnt"
    with small_disk(disk) as kind:
        if kind == "read-only":
            drill.record("disk", "setup", "no tmpfs here: a read-only folder instead", True)
            ro = disk / "ro"
            ro.mkdir()
            ro.chmod(0o555)
            proc = serve_once(ro / "data", free_port())
            line = one_line_error(proc)
            drill.record(
                "disk",
                "serve on a read-only folder",
                f"exit {proc.returncode}: {line}",
                proc.returncode == 2 and bool(line),
            )
            out = ro / "out"
        else:
            data = disk / "data"
            service = Service(data, wait=True)
            done = service.submit(drill.job())
            assert service.wait(done)["state"] == "succeeded"
            filler = fill(disk, 256 << 10)
            job = service.submit(drill.job())
            status = service.wait(job)
            ok = (
                status["state"] == "failed"
                and "MiB free" in (status["error"] or "")
                and status["steps"]
                and status["step"] == 0
                and on_disk(data / "jobs" / job, "failed")
            )
            drill.record(
                "disk",
                "job on a nearly full disk",
                f"{status['state']} before optimizing: '{reason(status['error'] or '')}'",
                ok,
            )
            fill(disk, 0)
            r = service.client.post("/v1/jobs", json=drill.job())
            code = (
                r.json().get("error", {}).get("code")
                if r.headers.get("content-type") == "application/json"
                else None
            )
            drill.record(
                "disk",
                "submit on a full disk",
                f"HTTP {r.status_code} {code}",
                r.status_code == 503 and code == "storage_error",
            )
            health = service.client.get("/v1/health").status_code
            drill.record("disk", "health on a full disk", f"HTTP {health}", health == 200)
            left = [p.name for p in (data / "jobs").rglob("*.tmp")] + leftovers(data / "jobs" / job)
            drill.record("disk", "partial files after the failures", str(left or "none"), not left)
            filler.unlink()
            again = service.submit(drill.job())
            recovered = service.wait(again)["state"] == "succeeded"
            drill.record("disk", "space freed: next job", "succeeded" if recovered else "failed", recovered)
            service.stop()
            fill(disk, 128 << 10)
            out = disk / "out"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "backend", "generate", "a red cube", "--model", drill.model, "--steps", "2", "--out", str(out)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        line = one_line_error(proc)
        files = [p.name for p in out.iterdir()] if out.is_dir() else []
        ok = proc.returncode == 1 and bool(line) and not files
        drill.record(
            "disk",
            f"CLI --out on a {'full' if kind == 'tmpfs' else 'read-only'} disk",
            f"exit {proc.returncode}, one line: '{reason(line)}'; files {files or 'none'}",
            ok,
            time.monotonic() - started,
        )


# ---- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "fault_drill.json")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")

    from backend.engine.tiny_prior import make_tiny_prior

    work = Path(tempfile.mkdtemp(prefix="dreamsmith-drill-"))
    model = str(make_tiny_prior(work / "tiny", pixel=True, seed=0))
    drill = Drill(work, model)
    runs = {
        "kill": kill_drill,
        "two": two_services_drill,
        "cancel": cancel_drill,
        "damaged": damaged_drill,
        "disk": disk_drill,
    }
    started = time.monotonic()
    for name in chosen:
        print(f"{name}:", flush=True)
        try:
            runs[name](drill)
        except Exception as exc:  # a drill that breaks is a failed check, reported with the rest
            drill.record(name, "drill", f"broke: {type(exc).__name__}: {exc}", False)
    total = time.monotonic() - started

    width = {k: max(len(k), *(len(str(getattr(r, k))) for r in drill.rows)) for k in ("scenario", "case")}
    print(f"\nfault drill ({total:.0f} s, tiny random model, {os.cpu_count()} CPUs)")
    print(f"| {'scenario':<{width['scenario']}} | {'case':<{width['case']}} | what happened | time | ok |")
    print(f"|{'-' * (width['scenario'] + 2)}|{'-' * (width['case'] + 2)}|---|---|---|")
    for r in drill.rows:
        took = "" if r.seconds is None else f"{r.seconds:.2f} s"
        print(
            f"| {r.scenario:<{width['scenario']}} | {r.case:<{width['case']}} | {r.observed} | {took} | {'yes' if r.ok else 'NO'} |"
        )
    failed = [r for r in drill.rows if not r.ok]
    print(f"{len(drill.rows) - len(failed)}/{len(drill.rows)} checks passed")
    results = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "seconds": round(total, 1),
        "rows": [asdict(r) for r in drill.rows],
        "passed": len(drill.rows) - len(failed),
        "failed": len(failed),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
