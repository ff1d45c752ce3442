"""`python -m backend batch`: the file's formats and bad lines, one folder per item, resume, retry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.batch import (
    ITEM_NAME,
    SUMMARY_NAME,
    Batch,
    BatchFileError,
    ItemEvent,
    read_batch_file,
    run_batch,
)
from backend.engine.prior import PriorCache

ROOT = Path(__file__).resolve().parents[1]
# Small and fast: the tiny model, 3 steps, a coarse mesh.
SMALL = {
    "steps": 3,
    "render_size": 32,
    "samples_per_ray": 16,
    "export.mesh_resolution": 24,
    "export.target_faces": 1000,
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_items_settings_and_names(tmp_path):
    f = write(
        tmp_path / "p.csv",
        "prompt,seed,export.texture,camera.fov_deg,name,negative_prompt\n"
        "# a comment line\n"
        'a red cube,3,uv,"[30, 40]",,123\n'
        "\n"
        '"a blue, round sphere",,,,hero-sphere,\n',
    )
    items = read_batch_file(f, {"steps": 7, "seed": 1})
    assert [i.name for i in items] == ["001-a_red_cube", "hero-sphere"]
    assert [i.line for i in items] == [3, 5]
    a, b = (i.config for i in items)
    assert (a.prompt, a.seed, a.steps, a.export.texture, a.camera.fov_deg) == (
        "a red cube",
        3,
        7,
        "uv",
        (30.0, 40.0),
    )
    assert a.negative_prompt == "123"  # a text setting takes the cell as it is
    assert (b.prompt, b.seed, b.export.texture) == ("a blue, round sphere", 1, "vertex")  # the command line's


def test_jsonl_and_txt(tmp_path):
    f = write(
        tmp_path / "p.jsonl",
        '{"prompt": "a red cube", "export": {"smoothing": 0}, "camera.distance": [2, 3]}\n"a green cone"\n',
    )
    a, b = read_batch_file(f)
    assert a.config.export.smoothing == 0 and a.config.camera.distance == (2.0, 3.0)
    assert b.config.prompt == "a green cone" and b.name == "002-a_green_cone"
    t = write(tmp_path / "p.txt", "a red cube\n\n# skip\n  a yellow torus  \n")
    assert [(i.line, i.config.prompt) for i in read_batch_file(t)] == [
        (1, "a red cube"),
        (4, "a yellow torus"),
    ]


def test_every_bad_line_is_reported_with_its_number(tmp_path):
    f = write(
        tmp_path / "bad.csv",
        "prompt,seed,steps,name\n"
        "a red cube,1,,\n"
        "a blue cube,-4,,\n"  # 3: out of range
        ",2,,\n"  # 4: no prompt
        "a cone,1,many,\n"  # 5: not a number
        "a torus,1,,a/b\n"  # 6: bad folder name
        "a house,1,,dup\n"
        "a house again,2,,DUP\n"  # 8: the same folder (case-insensitive)
        "too,many,cells,here,x\n",  # 9
    )
    with pytest.raises(BatchFileError) as info:
        read_batch_file(f)
    lines = [n for n, _ in info.value.problems]
    assert lines == [3, 4, 5, 6, 8, 9]
    text = str(info.value)
    assert "nothing was run" in text
    assert "bad.csv line 3: seed: must be between 0 and" in text
    assert "line 4: prompt: is required" in text
    assert "line 5: steps: must be an integer, got 'many'" in text
    assert "line 6: name: 'a/b'" in text
    assert "line 8: name: 'DUP' is already the name of line 7's item" in text
    assert "line 9: 5 cells, but the header names 4 columns" in text


def test_bad_header_and_bad_json(tmp_path):
    with pytest.raises(BatchFileError) as info:
        read_batch_file(write(tmp_path / "h.csv", "prompt,sed\na red cube,1\n"))
    assert info.value.problems == [(1, "unknown column 'sed': not a setting (docs/design.md)")]
    with pytest.raises(BatchFileError) as info:
        read_batch_file(write(tmp_path / "n.csv", "seed\n1\n"))
    assert "must name a 'prompt' column" in info.value.problems[0][1]
    with pytest.raises(BatchFileError) as info:
        read_batch_file(
            write(
                tmp_path / "j.jsonl",
                '{"prompt": "a"}\n{"prompt": "b",}\n[1]\n{"prompt": "c", "bogus": 1}\n{"prompt": "d", "export": {"texture": "png"}}\n',
            )
        )
    problems = dict(info.value.problems)
    assert sorted(problems) == [2, 3, 4, 5]
    assert problems[2].startswith("not valid JSON")
    assert "must be a JSON object" in problems[3]
    assert problems[4] == "bogus: unknown setting"
    assert problems[5].startswith("export.texture: unknown value 'png'")


def test_the_command_runs_nothing_when_a_line_is_bad(tmp_path):
    f = write(tmp_path / "p.csv", "prompt,steps\na red cube,3\na blue cube,0\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "backend", "batch", str(f), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "p.csv line 3: steps: must be between 1 and 20000, got 0" in done.stderr
    assert not out.exists()
    # A bad command-line setting is one line too.
    done = subprocess.run(
        [sys.executable, "-m", "backend", "batch", str(f), "--out", str(out), "--set", "lr_grid=-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "lr_grid: must be between" in done.stderr and not out.exists()


# ---- running ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def priors() -> PriorCache:
    return PriorCache()


def batch_file(tmp_path: Path, model: Path, broken: bool = True) -> Path:
    lines = [
        {"prompt": "a red cube", "seed": 1},
        {"prompt": "a blue sphere", "seed": 2, "name": "sphere"},
    ]
    if broken:
        lines.append({"prompt": "a broken one", "model": str(tmp_path / "no-such-model")})
    return write(tmp_path / "p.jsonl", "".join(json.dumps(x) + "\n" for x in lines))


def run(path: Path, out: Path, model: Path, priors: PriorCache, **kw) -> tuple[dict, list[ItemEvent]]:
    events: list[ItemEvent] = []
    batch = Batch(read_batch_file(path, SMALL | {"model": str(model)}), out, source=str(path))
    report = run_batch(batch, on_event=events.append, priors=priors, **kw)
    assert json.loads((out / SUMMARY_NAME).read_text()) == json.loads(json.dumps(report.to_json()))
    return {r["name"]: r for r in report.items}, events


def test_batch_runs_resumes_and_retries(tiny_pixel_prior, tmp_path, priors):
    path, out = batch_file(tmp_path, tiny_pixel_prior), tmp_path / "out"
    rows, events = run(path, out, tiny_pixel_prior, priors)
    assert {n: r["state"] for n, r in rows.items()} == {
        "001-a_red_cube": "succeeded",
        "sphere": "succeeded",
        "003-a_broken_one": "failed",
    }
    for name in ("001-a_red_cube", "sphere"):
        files = {p.name for p in (out / name).iterdir()}
        assert files == {"mesh.glb", "mesh.npz", "preview.png", "field.pt", ITEM_NAME}
        assert rows[name]["files"] == sorted(f"{name}/{f}" for f in files - {ITEM_NAME})
        record = json.loads((out / name / ITEM_NAME).read_text())
        assert record["state"] == "succeeded" and record["attempts"] == 1 and record["config"]["steps"] == 3
    broken = rows["003-a_broken_one"]
    assert "no-such-model" in broken["error"] and broken["files"] == []
    assert sorted(p.name for p in (out / "003-a_broken_one").iterdir()) == [ITEM_NAME]
    # Progress: each item started, its steps, finished; in file order.
    finished = [e.name for e in events if e.kind == "finished"]
    assert finished == ["001-a_red_cube", "sphere", "003-a_broken_one"]
    assert [e.step for e in events if e.kind == "step" and e.name == "sphere"] == [1, 2, 3]

    # Again: nothing runs; the failed item stays failed.
    mtime = (out / "sphere" / "mesh.npz").stat().st_mtime_ns
    rows, events = run(path, out, tiny_pixel_prior, priors)
    assert not events and not any(r["ran"] for r in rows.values())
    assert rows["003-a_broken_one"]["state"] == "failed" and rows["sphere"]["state"] == "succeeded"
    assert (out / "sphere" / "mesh.npz").stat().st_mtime_ns == mtime

    # --retry-failed runs only the failed one again.
    rows, events = run(path, out, tiny_pixel_prior, priors, retry_failed=True)
    assert {e.name for e in events} == {"003-a_broken_one"}
    assert rows["003-a_broken_one"]["attempts"] == 2 and rows["003-a_broken_one"]["ran"]

    # Fixed in the file (its settings changed): it runs again, and the others are still skipped.
    write(path, path.read_text().replace(str(tmp_path / "no-such-model"), str(tiny_pixel_prior)))
    rows, events = run(path, out, tiny_pixel_prior, priors)
    assert {e.name for e in events} == {"003-a_broken_one"}
    assert all(r["state"] == "succeeded" for r in rows.values())


def test_an_interrupted_or_damaged_item_runs_again(tiny_pixel_prior, tmp_path, priors):
    path, out = batch_file(tmp_path, tiny_pixel_prior, broken=False), tmp_path / "out"
    run(path, out, tiny_pixel_prior, priors)
    record = json.loads((out / "sphere" / ITEM_NAME).read_text())
    (out / "sphere" / ITEM_NAME).write_text(json.dumps(record | {"state": "running"}))  # killed mid-run
    (out / "001-a_red_cube" / "mesh.glb").unlink()  # a result file gone
    rows, events = run(path, out, tiny_pixel_prior, priors)
    assert {e.name for e in events if e.kind == "finished"} == {"sphere", "001-a_red_cube"}
    assert rows["sphere"]["attempts"] == 2 and all(r["state"] == "succeeded" for r in rows.values())
    assert (out / "001-a_red_cube" / "mesh.glb").is_file()


def test_summary_table(tiny_pixel_prior, tmp_path, priors):
    path, out = batch_file(tmp_path, tiny_pixel_prior), tmp_path / "out"
    batch = Batch(read_batch_file(path, SMALL | {"model": str(tiny_pixel_prior)}), out)
    report = run_batch(batch, priors=priors)
    table = report.table().splitlines()
    assert table[0].split() == ["item", "state", "time", "files"]
    assert table[2].split()[:2] == ["001-a_red_cube", "succeeded"]
    assert table[2].endswith("field.pt mesh.glb mesh.npz preview.png")
    assert table[4].split()[:2] == ["003-a_broken_one", "failed"] and table[4].endswith("-")
    closing = report.closing()
    assert "003-a_broken_one: " in closing and "2 succeeded, 1 failed" in closing
    assert not report.ok


def test_a_second_run_on_the_same_folder_is_refused(tiny_pixel_prior, tmp_path):
    from backend.batch import BatchLock
    from backend.errors import DreamsmithError

    out = tmp_path / "out"
    out.mkdir()
    with BatchLock(out):
        batch = Batch(read_batch_file(batch_file(tmp_path, tiny_pixel_prior), SMALL), out)
        with pytest.raises(DreamsmithError, match="in use by another batch run"):
            run_batch(batch)
