"""Batches: a file of prompts -> one result folder per item, resumable; a failing item fails alone.

`python -m backend batch prompts.csv --out DIR [generation options]` (`backend.cli`). The file is read and
every line checked before anything runs (`read_batch_file`: all bad lines are reported, with their line
numbers and reasons, in one `BatchFileError`). Formats:

- `.csv`: a header row naming the columns: `prompt` (required), `name` (optional: the item's folder) and
  any settings of the settings table by their dotted keys (`seed`, `steps`, `export.texture`, ...). An empty
  cell leaves the setting to the command line; other cells are JSON (`[40, 50]`, `true`), text settings
  take the cell as it is.
- `.jsonl`: one JSON object a line, `{"prompt": "...", "seed": 3, "export": {"texture": "uv"}}` (nested
  groups or dotted keys), or a JSON string (just a prompt).
- `.txt`: one prompt a line.

Blank lines and lines starting with `#` are skipped. A line's settings override the command line's, which
override the settings table's defaults; each item's config is validated by `config.with_overrides`.

Layout of DIR:

    DIR/batch.json            the summary: every item's state, time and files (rewritten after each item)
    DIR/001-a_red_cube/       one folder per item, named `NNN-<prompt>` (or the line's `name`)
        item.json            the item's record: prompt, settings, state, error, time, files, attempts
        mesh.glb mesh.npz preview.png field.pt (texture.png)

A second run of the same file skips items whose record says succeeded with the same settings, and items
that failed with the same settings unless `retry_failed`; anything else (new, interrupted, settings
changed) runs. `field.pt` holds the weights only (like the service's: `export` re-exports it).

`run_batch` runs the items one after another in this process with one prior cache for the whole batch;
`backend.batch_ray.run_batch_ray` runs them as Ray tasks and writes the same folders. Both report through
`on_event` (`ItemEvent`), which the CLI turns into progress bars (`ProgressBars`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.config import GenerationConfig, with_overrides
from backend.errors import DreamsmithError, InvalidConfig
from backend.fileio import (
    check_output_folder,
    remove_orphan_temporaries,
    result_bytes_bound,
    try_lock,
    write_bytes_atomic,
    write_json_atomic,
)
from backend.settings import settings_of

SUMMARY_NAME = "batch.json"
ITEM_NAME = "item.json"
LOCK_NAME = ".batch.lock"
SUMMARY_FORMAT = "dreamsmith-batch/1"
ITEM_FORMAT = "dreamsmith-batch-item/1"
FORMATS = (".csv", ".jsonl", ".ndjson", ".txt")
# Files a generation writes into its folder; cleared before an item runs again.
RESULT_FILES = ("mesh.glb", "mesh.npz", "preview.png", "texture.png", "field.pt", "error.log")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
STATES = ("running", "succeeded", "failed", "interrupted")


class BatchFileError(DreamsmithError):
    """The batch file has bad lines; `problems` holds (line number, reason) for every one of them."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        lines = [
            f"{path.name} line {n}: {reason}" if n else f"{path.name}: {reason}" for n, reason in problems
        ]
        count = len(problems)
        head = f"{path} has {count} bad line{'s' if count != 1 else ''}; nothing was run:"
        super().__init__("\n".join([head, *(f"  {line}" for line in lines)]))
        self.path = path
        self.problems = problems


@dataclass
class BatchItem:
    index: int  # 1-based position among the file's items
    line: int  # where it starts in the file
    name: str  # its folder under the batch's output folder
    config: GenerationConfig


@dataclass
class Outcome:
    """How one run of one item ended."""

    state: str  # succeeded | failed | interrupted
    seconds: float
    files: list[str] = field(default_factory=list)  # names in the item's folder
    error: str | None = None
    traceback: str | None = None  # of an internal error (a bug), kept as error.log
    n_faces: int = 0


@dataclass
class ItemRecord:
    """An item's `item.json`, and its row of `batch.json`."""

    name: str
    index: int
    line: int
    prompt: str
    config: dict[str, Any]
    state: str = "running"
    error: str | None = None
    seconds: float | None = None
    files: list[str] = field(default_factory=list)
    attempts: int = 0  # runs of this item that started, all batch runs together (Ray retries included)
    worker: str = ""  # host:pid of the last run
    finished_at: float | None = None  # Unix time

    def to_json(self) -> dict[str, Any]:
        return {"format": ITEM_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> ItemRecord | None:
        if not isinstance(data, dict) or data.get("format") != ITEM_FORMAT:
            return None
        names = set(cls.__dataclass_fields__)
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None
        if record.state not in STATES or not isinstance(record.config, dict):
            return None
        return record


@dataclass
class ItemEvent:
    """Progress of one item: `started` (a run began, on `worker`), `step` (optimization step done),
    `phase` (loading model, extracting mesh, texturing) or `finished` (with its record)."""

    name: str
    kind: str
    step: int = 0
    steps: int = 0
    phase: str = ""
    worker: str = ""
    pid: int | None = None
    attempt: int = 0
    record: ItemRecord | None = None


EventSink = Callable[[ItemEvent], None]


# ---- reading the file -------------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "result"


_SETTINGS = {s.key: s for s in settings_of(GenerationConfig)}


def _cell_value(key: str, text: str) -> Any:
    """A CSV cell as a setting's value: text settings take it as it is, the others are JSON."""
    s = _SETTINGS.get(key)
    if s is not None and s.base_type is str:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # validation names the setting and what it wanted


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """{"export": {"texture": "uv"}} -> {"export.texture": "uv"}; dotted keys pass through."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("camera", "export"):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def _csv_rows(text: str, problems: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    columns: list[str | None] = []
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip() for c in row]
                if "prompt" not in header:
                    problems.append((start, "the header row must name a 'prompt' column (e.g. prompt,seed)"))
                    return
                seen: set[str] = set()
                for col in header:
                    if col in seen:
                        problems.append((start, f"column {col!r} is named twice"))
                    seen.add(col)
                    if col in ("prompt", "name") or col in _SETTINGS:
                        columns.append(col)
                    else:
                        problems.append((start, f"unknown column {col!r}: not a setting (docs/design.md)"))
                        columns.append(None)
                continue
            if len(row) > len(header):
                problems.append((start, f"{len(row)} cells, but the header names {len(header)} columns"))
                continue
            values: dict[str, Any] = {}
            for key, cell in zip(columns, row, strict=False):
                if key is None or not cell.strip():
                    continue
                values[key] = cell.strip() if key in ("prompt", "name") else _cell_value(key, cell.strip())
            yield start, values
    except csv.Error as exc:
        problems.append((reader.line_num, f"not valid CSV ({exc})"))
    if header is None and not problems:
        problems.append((0, "no header row (prompt,setting,...) and no items"))


def _jsonl_rows(text: str, problems: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((n, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if isinstance(data, str):
            data = {"prompt": data}
        if not isinstance(data, dict):
            problems.append((n, 'must be a JSON object ({"prompt": "...", "seed": 1}) or a JSON string'))
            continue
        yield n, _flatten(data)


def _txt_rows(text: str, problems: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield n, {"prompt": line.strip()}


def read_batch_file(path: Path | str, changes: dict[str, Any] | None = None) -> list[BatchItem]:
    """The items of a batch file, each with its validated config (`changes`: the command line's settings,
    dotted keys, which a line's own settings override). Raises BatchFileError listing every bad line."""
    path = Path(path)
    changes = dict(changes or {})
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise DreamsmithError(f"{path}: a batch file is .csv, .jsonl or .txt (one prompt a line)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DreamsmithError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BatchFileError(path, [(0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from exc
    problems: list[tuple[int, str]] = []
    rows = {".csv": _csv_rows, ".txt": _txt_rows}.get(fmt, _jsonl_rows)(text, problems)
    parsed: list[tuple[int, str | None, GenerationConfig]] = []
    for line, values in rows:
        values = dict(values)
        prompt = values.pop("prompt", None)
        name = values.pop("name", None)
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append((line, 'prompt: is required (a non-empty text, e.g. "a red cube")'))
            continue
        if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
            problems.append(
                (line, f"name: {name!r} must be 1-80 letters, digits, '.', '_' or '-' (a folder name)")
            )
            continue
        try:
            cfg = with_overrides(GenerationConfig(prompt=prompt.strip()), changes | values)
        except InvalidConfig as exc:
            problems.append((line, str(exc)))
            continue
        parsed.append((line, name, cfg))
    if not parsed and not problems:
        problems.append((0, "no items (each line: a prompt and optional settings)"))
    width = max(3, len(str(len(parsed))))
    items: list[BatchItem] = []
    taken: dict[str, int] = {}
    for index, (line, name, cfg) in enumerate(parsed, start=1):
        folder = name or f"{index:0{width}d}-{slug(cfg.prompt)}"
        key = folder.lower()  # folders differing only in case are one folder on some file systems
        if key in taken:
            problems.append((line, f"name: {folder!r} is already the name of line {taken[key]}'s item"))
            continue
        taken[key] = line
        items.append(BatchItem(index, line, folder, cfg))
    if problems:
        raise BatchFileError(path, sorted(problems))
    return items


# ---- records and the output folder ------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """A config dict as JSON would return it (tuples -> lists), so that records compare equal."""
    return json.loads(json.dumps(obj))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class BatchLock:
    """One batch run per output folder: an exclusive OS file lock on DIR/.batch.lock (gone with the
    process however it ends)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> BatchLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise DreamsmithError(
                f"{self.path.parent} is in use by another batch run ({who}); wait for it, or pass another --out"
            )
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class Batch:
    """A batch's output folder: which items run, their records, the summary. Runners call `plan` once,
    then `begin(item)` and `finish(item, outcome)` for each item they run."""

    def __init__(
        self, items: list[BatchItem], out_dir: Path | str, *, source: str = "", runner: str = "local"
    ) -> None:
        self.items = items
        self.out_dir = Path(out_dir)
        self.source = source
        self.runner = runner
        self.records: dict[str, ItemRecord] = {}
        self.ran: set[str] = set()  # items this run ran (the others were done or failed before)
        self.started = time.time()
        self.todo: list[BatchItem] = []

    def folder(self, item: BatchItem) -> Path:
        return self.out_dir / item.name

    def check_output(self) -> None:
        """The folder takes files and has room for one result (OutputError otherwise)."""
        bound = max(
            result_bytes_bound(
                i.config.export.target_faces, i.config.export.texture_size, i.config.export.texture == "uv"
            )
            for i in self.items
        )
        check_output_folder(self.out_dir, bound)

    def plan(self, retry_failed: bool = False) -> list[BatchItem]:
        """Read earlier records; the items to run now, in file order."""
        self.todo = []
        for item in self.items:
            previous = self._read_record(item)
            same = previous is not None and previous.config == _plain(item.config.to_dict())
            if previous is not None and same:
                # Kept as is when it is skipped; otherwise its count of attempts goes on.
                self.records[item.name] = previous
                done = previous.state == "succeeded" and self._files_there(previous, item)
                if done or (previous.state == "failed" and not retry_failed):
                    continue
            self.todo.append(item)
        self.write_summary()
        return self.todo

    def _read_record(self, item: BatchItem) -> ItemRecord | None:
        try:
            data = json.loads((self.folder(item) / ITEM_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return ItemRecord.from_json(data)

    def _files_there(self, record: ItemRecord, item: BatchItem) -> bool:
        return bool(record.files) and all((self.folder(item) / f).is_file() for f in record.files)

    def begin(self, item: BatchItem, worker: str = "") -> ItemRecord:
        """Clear the item's old result files and record it as running."""
        folder = self.folder(item)
        folder.mkdir(parents=True, exist_ok=True)
        remove_orphan_temporaries(folder)
        for name in RESULT_FILES:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        previous = self.records.get(item.name)
        record = ItemRecord(
            name=item.name,
            index=item.index,
            line=item.line,
            prompt=item.config.prompt,
            config=_plain(item.config.to_dict()),
            attempts=previous.attempts if previous is not None else 0,
            worker=worker,
        )
        self.records[item.name] = record
        self.ran.add(item.name)
        write_json_atomic(folder / ITEM_NAME, record.to_json())
        return record

    def finish(self, item: BatchItem, outcome: Outcome, *, attempts: int = 1, worker: str = "") -> ItemRecord:
        record = self.records.get(item.name) or self.begin(item)
        record.state = outcome.state
        record.error = outcome.error
        record.seconds = round(outcome.seconds, 3)
        record.files = sorted(outcome.files)
        record.attempts += attempts
        record.worker = worker or record.worker
        record.finished_at = round(time.time(), 3)
        folder = self.folder(item)
        if outcome.traceback:
            with contextlib.suppress(OSError):
                write_bytes_atomic(folder / "error.log", outcome.traceback.encode("utf-8"))
        write_json_atomic(folder / ITEM_NAME, record.to_json())
        self.write_summary()
        return record

    def interrupt(self, item: BatchItem) -> None:
        record = self.records.get(item.name)
        if record is not None and record.state == "running":
            self.finish(item, Outcome("interrupted", 0.0, error="the batch run was interrupted"))

    def report(self) -> BatchReport:
        rows = []
        for item in self.items:
            record = self.records.get(item.name)
            state = record.state if record is not None else "pending"
            rows.append(
                {
                    "name": item.name,
                    "line": item.line,
                    "prompt": item.config.prompt,
                    "state": state,
                    "ran": item.name in self.ran,
                    "seconds": record.seconds if record is not None else None,
                    "files": [f"{item.name}/{f}" for f in record.files] if record is not None else [],
                    "error": record.error if record is not None else None,
                    "attempts": record.attempts if record is not None else 0,
                    "worker": record.worker if record is not None else "",
                }
            )
        return BatchReport(
            source=self.source,
            out_dir=self.out_dir,
            runner=self.runner,
            seconds=time.time() - self.started,
            items=rows,
            updated_at=time.time(),
        )

    def write_summary(self) -> BatchReport:
        report = self.report()
        write_json_atomic(self.out_dir / SUMMARY_NAME, report.to_json())
        return report


@dataclass
class BatchReport:
    source: str
    out_dir: Path
    runner: str
    seconds: float  # wall time of this run
    items: list[dict[str, Any]]
    updated_at: float = 0.0

    def count(self, state: str, ran: bool | None = None) -> int:
        return sum(1 for r in self.items if r["state"] == state and (ran is None or r["ran"] == ran))

    @property
    def ok(self) -> bool:
        return all(r["state"] == "succeeded" for r in self.items)

    def to_json(self) -> dict[str, Any]:
        counts = {s: self.count(s) for s in ("succeeded", "failed", "interrupted", "running", "pending")}
        return {
            "format": SUMMARY_FORMAT,
            "source": self.source,
            "runner": self.runner,
            "seconds": round(self.seconds, 3),
            "updated_at": round(self.updated_at, 3),
            "counts": {k: v for k, v in counts.items() if v},
            "items": self.items,
        }

    def table(self) -> str:
        """item | state | time | files, one row per item; `(earlier)` marks items this run skipped."""
        rows = [("item", "state", "time", "files")]
        for r in self.items:
            state = r["state"] + ("" if r["ran"] or r["state"] == "pending" else " (earlier)")
            secs = "" if r["seconds"] is None else f"{r['seconds']:.1f} s"
            files = " ".join(f.rsplit("/", 1)[-1] for f in r["files"]) or "-"
            rows.append((r["name"], state, secs, files))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)

    def closing(self) -> str:
        """The lines after the table: the errors of failed items, the counts, where the summary is."""
        out = [f"  {r['name']}: {r['error']}" for r in self.items if r["state"] != "succeeded" and r["error"]]
        if out:
            out.insert(0, "errors:")
        parts = [f"{self.count('succeeded')} succeeded"]
        for state in ("failed", "interrupted", "pending"):
            if self.count(state):
                parts.append(f"{self.count(state)} {state}")
        skipped = sum(1 for r in self.items if not r["ran"] and r["state"] != "pending")
        tail = f" ({skipped} from an earlier run)" if skipped else ""
        out.append(
            f"{', '.join(parts)}{tail} in {self.seconds:.1f} s; summary: {self.out_dir / SUMMARY_NAME}"
        )
        if self.count("failed") and any(not r["ran"] for r in self.items if r["state"] == "failed"):
            out.append("failed items are skipped when the batch runs again; --retry-failed runs them again")
        return "\n".join(out)


# ---- running an item ---------------------------------------------------------------------------------------


def run_item(
    cfg: GenerationConfig,
    folder: Path,
    *,
    priors: Any = None,
    on_progress: Callable[[Any], None] | None = None,
) -> Outcome:
    """One generation into `folder`; every failure becomes a failed Outcome (KeyboardInterrupt excepted).
    The files of a failed run are removed, so a folder holds a whole result or none."""
    from backend.engine.pipeline import generate

    start = time.perf_counter()
    try:
        export = cfg.export
        check_output_folder(
            folder, result_bytes_bound(export.target_faces, export.texture_size, export.texture == "uv")
        )
        result = generate(cfg, folder, on_progress=on_progress, priors=priors, resumable_checkpoint=False)
        files = sorted(p.name for p in result.files.values())
        return Outcome("succeeded", time.perf_counter() - start, files=files, n_faces=result.n_faces)
    except DreamsmithError as exc:
        clear_results(folder)
        return Outcome("failed", time.perf_counter() - start, error=str(exc))
    except OSError as exc:
        clear_results(folder)
        where = f" ({exc.filename})" if exc.filename else ""
        return Outcome("failed", time.perf_counter() - start, error=f"{exc.strerror or exc}{where}")
    except Exception as exc:  # a bug: one line in the summary, the traceback in error.log
        clear_results(folder)
        return Outcome(
            "failed",
            time.perf_counter() - start,
            error=f"internal error ({type(exc).__name__}: {exc}); traceback in error.log",
            traceback="".join(traceback.format_exception(exc)),
        )


def clear_results(folder: Path) -> None:
    """Remove a generation's result files (and orphan temporaries) from `folder`."""
    for name in RESULT_FILES:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    remove_orphan_temporaries(folder)


def _progress_events(name: str, on_event: EventSink | None) -> Callable[[Any], None] | None:
    if on_event is None:
        return None

    def on_progress(p: Any) -> None:
        if p.phase == "optimizing":
            on_event(ItemEvent(name, "step", step=p.step, steps=p.steps))
        elif p.phase != "done":
            on_event(ItemEvent(name, "phase", step=p.step, steps=p.steps, phase=p.phase))

    return on_progress


def run_batch(
    batch: Batch,
    *,
    retry_failed: bool = False,
    on_event: EventSink | None = None,
    priors: Any = None,
) -> BatchReport:
    """Run the batch's items one after another in this process, sharing one prior cache."""
    from backend.engine.prior import PriorCache

    batch.check_output()
    priors = priors or PriorCache()
    with BatchLock(batch.out_dir):
        todo = batch.plan(retry_failed)
        me = worker_id()
        for item in todo:
            batch.begin(item, me)
            if on_event is not None:
                on_event(ItemEvent(item.name, "started", steps=item.config.steps, worker=me, pid=os.getpid()))
            try:
                outcome = run_item(
                    item.config,
                    batch.folder(item),
                    priors=priors,
                    on_progress=_progress_events(item.name, on_event),
                )
            except KeyboardInterrupt:
                clear_results(batch.folder(item))
                batch.interrupt(item)
                raise
            record = batch.finish(item, outcome, worker=me)
            if on_event is not None:
                on_event(ItemEvent(item.name, "finished", steps=item.config.steps, record=record))
        return batch.write_summary()


# ---- progress bars -----------------------------------------------------------------------------------------


class ProgressBars:
    """Two tqdm bars on stderr, made at the first event: items finished, and optimization steps over all
    the items this run runs."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.done: dict[str, int] = {}
        self.active: dict[str, str] = {}
        self.items: Any = None
        self.steps: Any = None

    def _open(self) -> None:
        from tqdm import tqdm

        self.steps_of = {i.name: i.config.steps for i in self.batch.todo}
        self.items = tqdm(
            total=len(self.batch.todo), unit="item", desc="items", position=0, dynamic_ncols=True
        )
        self.steps = tqdm(
            total=sum(self.steps_of.values()), unit="step", desc="steps", position=1, dynamic_ncols=True
        )

    def __call__(self, event: ItemEvent) -> None:
        if self.items is None:
            self._open()
        if event.kind == "started":
            self.done[event.name] = 0
            self.active[event.name] = ""
        elif event.kind == "step":
            self.done[event.name] = event.step
            self.active[event.name] = ""
        elif event.kind == "phase":
            self.active[event.name] = event.phase
        elif event.kind == "finished":
            self.done[event.name] = self.steps_of.get(event.name, 0)
            self.active.pop(event.name, None)
            self.items.update(1)
            state = event.record.state if event.record is not None else "?"
            self.items.set_postfix_str(f"last: {event.name} {state}", refresh=False)
        running = ", ".join(f"{n} {p}".strip() for n, p in self.active.items())
        self.steps.set_description_str(running[:60] or "steps", refresh=False)
        self.steps.n = sum(self.done.values())
        self.steps.refresh()
        self.items.refresh()

    def close(self) -> None:
        if self.items is not None:
            self.steps.close()
            self.items.close()


# ---- the command -------------------------------------------------------------------------------------------


def command(
    path: Path,
    out: Path | None,
    changes: dict[str, Any],
    *,
    retry_failed: bool = False,
    ray: bool = False,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    ray_retries: int = 3,
    ray_cpus: float = 1.0,
    progress: bool = True,
) -> int:
    """`python -m backend batch`: 0 when every item succeeded (now or earlier), 1 when any did not,
    2 for a bad file or arguments (nothing ran), 130 on Ctrl-C (run it again to go on)."""
    # The models' own loading bars would tear the batch's two bars apart.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        items = read_batch_file(path, changes)
    except DreamsmithError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = out if out is not None else Path("out") / slug(path.stem)
    runner = "local"
    if ray:
        from backend.batch_ray import RayMissing, import_ray

        try:
            import_ray()
        except RayMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        runner = f"ray ({ray_address or 'local cluster'})"
    batch = Batch(items, out, source=str(path), runner=runner)
    bars = ProgressBars(batch) if progress else None
    try:
        if ray:
            from backend.batch_ray import run_batch_ray

            report = run_batch_ray(
                batch,
                ray_address,
                retry_failed=retry_failed,
                workers=ray_workers,
                retries=ray_retries,
                cpus_per_item=ray_cpus,
                on_event=bars,
            )
        else:
            report = run_batch(batch, retry_failed=retry_failed, on_event=bars)
    except KeyboardInterrupt:
        if bars is not None:
            bars.close()
        print(batch.report().table())
        print(f"interrupted; run the same command again to go on (finished items are kept in {out})")
        return 130
    except DreamsmithError as exc:  # the output folder is unusable, busy, or the cluster unreachable
        if bars is not None:
            bars.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if bars is not None:
        bars.close()
    print(report.table())
    print(report.closing())
    return 0 if report.ok else 1
