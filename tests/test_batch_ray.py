"""`batch --ray`: a local Ray cluster of 2 CPU workers runs a 4-item batch with the tiny model, one item
failing and one item's worker killed mid-run; DIR ends as a run without Ray leaves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.batch import ITEM_NAME, Batch, ItemEvent, read_batch_file, run_batch
from backend.batch_ray import run_batch_ray

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "steps": 3,
    "render_size": 32,
    "samples_per_ray": 16,
    "export.mesh_resolution": 24,
    "export.target_faces": 1000,
}
LONG = "a long one"  # runs long enough to be killed mid-run


def batch_file(tmp_path: Path, model: Path) -> Path:
    lines = [
        {"prompt": "a red cube", "seed": 1},
        {"prompt": LONG, "seed": 2, "steps": 150},
        {"prompt": "a broken one", "model": str(tmp_path / "no-such-model")},
        {"prompt": "a blue sphere", "seed": 3},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def folder_contents(out: Path) -> dict[str, dict[str, object]]:
    """Per item: its files' names, state and the mesh arrays' bytes (what must not depend on Ray)."""
    seen: dict[str, dict[str, object]] = {}
    for item in sorted(p for p in out.iterdir() if p.is_dir()):
        record = json.loads((item / ITEM_NAME).read_text())
        mesh = item / "mesh.npz"
        seen[item.name] = {
            "files": sorted(p.name for p in item.iterdir()),
            "state": record["state"],
            "record files": record["files"],
            "mesh": mesh.read_bytes() if mesh.exists() else None,
        }
    return seen


def test_ray_batch_with_a_failing_item_and_a_killed_worker(tiny_pixel_prior, tmp_path):
    path = batch_file(tmp_path, tiny_pixel_prior)
    items = read_batch_file(path, SMALL | {"model": str(tiny_pixel_prior)})
    killed: list[int] = []
    events: list[ItemEvent] = []

    def on_event(event: ItemEvent) -> None:
        events.append(event)
        long_started = [e for e in events if e.kind == "started" and e.name == "002-a_long_one"]
        if event.kind == "step" and event.name == "002-a_long_one" and not killed and long_started:
            pid = long_started[-1].pid
            assert pid is not None and pid != os.getpid()
            os.kill(pid, signal.SIGKILL)  # the worker process dies mid-run
            killed.append(pid)

    ray_out = tmp_path / "ray"
    report = run_batch_ray(Batch(items, ray_out, runner="ray"), workers=2, on_event=on_event)
    rows = {r["name"]: r for r in report.items}
    assert killed, "the long item was seen running"
    assert {n: r["state"] for n, r in rows.items()} == {
        "001-a_red_cube": "succeeded",
        "002-a_long_one": "succeeded",  # started again by Ray after its worker died
        "003-a_broken_one": "failed",
        "004-a_blue_sphere": "succeeded",
    }
    assert rows["002-a_long_one"]["attempts"] == 2
    assert "no-such-model" in rows["003-a_broken_one"]["error"] and rows["003-a_broken_one"]["attempts"] == 1
    workers = {r["worker"] for r in rows.values() if r["state"] == "succeeded"}
    assert all(w and w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers)  # ran in Ray's workers
    assert json.loads((ray_out / "batch.json").read_text())["counts"] == {"succeeded": 3, "failed": 1}

    # The same batch without Ray leaves the same folders, files and mesh bytes.
    plain_out = tmp_path / "plain"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker of 1 CPU
    try:
        run_batch(Batch(items, plain_out))
    finally:
        torch.set_num_threads(threads)
    assert folder_contents(ray_out) == folder_contents(plain_out)

    # A second run finds everything done (and does not start Ray at all).
    again = run_batch_ray(Batch(items, ray_out), workers=2)
    assert not any(r["ran"] for r in again.items)


def test_missing_ray_is_one_clear_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n")
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from backend.cli import main\n"
        f"sys.exit(main(['batch', {str(f)!r}, '--out', {str(tmp_path / 'out')!r}, '--ray']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --ray needs Ray, which is not installed: pip install 'dreamsmith[ray]' (or pip install ray==2.60.0)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["127.0.0.1:1"])
def test_an_unreachable_cluster_is_an_error(tiny_pixel_prior, tmp_path, address):
    from backend.errors import DreamsmithError

    items = read_batch_file(batch_file(tmp_path, tiny_pixel_prior), SMALL)
    with pytest.raises(DreamsmithError, match="could not start or reach the Ray cluster at 127.0.0.1:1"):
        run_batch_ray(Batch(items, tmp_path / "out"), address)


def test_items_no_node_can_take_are_refused(tiny_pixel_prior, tmp_path):
    from backend.errors import DreamsmithError

    items = read_batch_file(batch_file(tmp_path, tiny_pixel_prior), SMALL)
    with pytest.raises(DreamsmithError, match="--ray-cpus 2: the cluster has no GPU and only 1 CPUs"):
        run_batch_ray(Batch(items, tmp_path / "out"), workers=1, cpus_per_item=2)
    assert not any((tmp_path / "out").glob("*/item.json"))  # nothing began
