# mypy: disable-error-code="valid-type"
# (Blender declares properties as annotations that are calls, which type checkers cannot read.)
"""Operators: Generate (modal, non-blocking), Cancel, history actions, backend start/stop/check."""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bpy
from bpy.props import IntProperty

from . import backend_process, headless, live_preview, properties, session
from .client import (
    MESH_NPZ,
    TEXTURE_PNG,
    BackendClient,
    BackendError,
    GenerationRequest,
    JobStatus,
)
from .generation import import_downloaded, new_run, push_undo, refine_source, show_live
from .preferences import BackendSettings, backend_settings
from .runner import Downloaded, GenerationRun

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems

TIMER_INTERVAL_S = 0.5
BACKEND_START_TIMEOUT_S = 120.0


def _redraw(context: bpy.types.Context | None) -> None:
    wm = bpy.context.window_manager if context is None else context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


# Mixins of operators: bpy.types.Operator to the type checker, plain classes to Blender (it registers
# only the operator classes themselves, and a registered operator class must not be subclassed).
if TYPE_CHECKING:
    _OperatorMixin = bpy.types.Operator
else:
    _OperatorMixin = object


class TimedModal(_OperatorMixin):
    """What the modal operators (Generate, Instant, Refine, Variations) share: their own window timer,
    and which events wake them. Mixed into a bpy.types.Operator."""

    _timer: Any = None
    _last_tick: float = 0.0

    def _run_modal(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        wm = context.window_manager
        assert wm is not None
        self._timer = wm.event_timer_add(TIMER_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        _redraw(context)
        return {"RUNNING_MODAL"}

    def _wake(self, event: bpy.types.Event) -> str:
        """ "escape" (Esc pressed: cancel, then tick), "tick" (our timer) or "skip" (pass the event on)."""
        if event.type == "ESC" and event.value == "PRESS":
            return "escape"
        if event.type != "TIMER" or time.monotonic() - self._last_tick < 0.8 * TIMER_INTERVAL_S:
            return "skip"  # not a timer, or another operator's: ours fires soon enough
        self._last_tick = time.monotonic()
        return "tick"

    def _remove_timer(self, context: bpy.types.Context) -> None:
        if self._timer is not None and context.window_manager is not None:
            context.window_manager.event_timer_remove(self._timer)
        self._timer = None


def _start(
    context: bpy.types.Context, operator: bpy.types.Operator, *, fetch_previews: bool, mode: str = "optimize"
) -> GenerationRun | None:
    state = session.STATE
    state.last_error = ""
    state.last_message = ""
    state.preview_icon_id = 0
    state.preview_loaded_version = -1
    live_preview.remove()  # one left by an earlier session (a file saved while a run was going)
    try:
        run = new_run(context, fetch_previews=fetch_previews, mode=mode)
        run.start()
    except BackendError as exc:
        state.last_error = str(exc)
        if exc.unreachable:
            state.set_health(None, str(exc))
        operator.report({"ERROR"}, str(exc))
        return None
    state.run = run
    return run


def _finish(operator: bpy.types.Operator, run: GenerationRun) -> set[OperatorReturnItems]:
    state = session.STATE
    live_preview.remove()  # replaced by the result already, or the run was cancelled or failed
    if run.outcome == "succeeded":
        warnings = run.status.warnings if run.status is not None else []
        operator.report({"WARNING"} if warnings else {"INFO"}, state.last_message or "Dreamsmith: done")
        push_undo(f"Dreamsmith: {run.request.prompt[:40]}")
        return {"FINISHED"}
    if run.outcome == "cancelled":
        state.last_message = "Generation cancelled"
        if run.error:
            state.last_error = run.error
        operator.report({"WARNING"}, "Dreamsmith: generation cancelled")
        return {"CANCELLED"}
    state.last_error = run.error or "The generation failed."
    operator.report({"ERROR"}, state.last_error)
    return {"CANCELLED"}


# ---------------------------------------------------------------------------------------------------------
# Operators


class GenerationModal(TimedModal):
    """Generate, Instant and Refine: start a run of `mode` (generation.MODES), follow it with the window
    timer (modal) or in a loop (headless), import its result. Not UNDO: the modal run pushes its own
    undo step once the object exists."""

    mode = "optimize"
    _run: GenerationRun | None = None
    _live_shown: int = 0

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not session.STATE.running

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        run = _start(context, self, fetch_previews=True, mode=self.mode)
        if run is None:
            return {"CANCELLED"}
        self._run = run
        return self._run_modal(context)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        run = self._run
        if run is None:
            return {"CANCELLED"}
        wake = self._wake(event)
        if wake == "skip":
            return {"PASS_THROUGH"}
        if wake == "escape":
            run.request_cancel()
        run.tick()  # at most one short HTTP call
        if run.preview_path is not None and run.preview_version != session.STATE.preview_loaded_version:
            # A preview that cannot be shown is not worth stopping for.
            with contextlib.suppress(OSError, RuntimeError, KeyError):
                session.load_preview(run.preview_path, run.preview_version)
        if not run.finished and run.live_version != self._live_shown:
            self._live_shown = run.live_version
            # Nor is a live mesh (e.g. the scene changed under it): the result still comes.
            with contextlib.suppress(RuntimeError, ReferenceError, KeyError, ValueError):
                show_live(context, run)
        _redraw(context)
        if not run.finished:
            return {"RUNNING_MODAL"}
        self._remove_timer(context)
        return _finish(self, run)

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        """Blocking generation (scripts, `blender --background`): the same run, polled in a loop."""
        run = _start(context, self, fetch_previews=False, mode=self.mode)
        if run is None:
            return {"CANCELLED"}
        headless.run_with_progress(run)
        return _finish(self, run)

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender ends modal operators itself when a file is loaded or the window closes.
        if self._run is not None and not self._run.finished:
            self._run.request_cancel()
            self._run.tick()
        live_preview.remove()
        self._remove_timer(context)


class DREAMSMITH_OT_generate(GenerationModal, bpy.types.Operator):
    """Generate a 3D object from the prompt on the backend and import it at the 3D cursor"""

    bl_idname = "dreamsmith.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}
    mode = "optimize"


class DREAMSMITH_OT_instant(GenerationModal, bpy.types.Operator):
    """Make the prompt's shape in seconds with a trained generator (one forward pass, no optimization) and
    import it at the 3D cursor; Refine continues it"""

    bl_idname = "dreamsmith.instant"
    bl_label = "Instant"
    bl_options = {"REGISTER"}
    mode = "instant"


class DREAMSMITH_OT_refine(GenerationModal, bpy.types.Operator):
    """Optimize the selected Instant result (else the newest one) further for its prompt, starting from its
    shape instead of a blob, with the panel's method and steps; the result is imported as a new object"""

    bl_idname = "dreamsmith.refine"
    bl_label = "Refine"
    bl_options = {"REGISTER"}
    mode = "refine"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not session.STATE.running and refine_source(context) is not None


class DREAMSMITH_OT_cancel(bpy.types.Operator):
    """Stop the running generation (or variations) on the backend; nothing is imported"""

    bl_idname = "dreamsmith.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return session.STATE.running

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        run = session.STATE.run
        if run is not None and not run.finished:
            run.request_cancel()  # the generate operator's next tick tells the backend
        variations = session.STATE.variations
        if variations is not None and not variations.finished:
            variations.request_cancel()  # likewise, one job per tick
        return {"FINISHED"}


class DREAMSMITH_OT_randomize_seed(bpy.types.Operator):
    """Pick a new random seed"""

    bl_idname = "dreamsmith.randomize_seed"
    bl_label = "Randomize Seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        properties.settings_of(context).seed = random.randint(0, 2**31 - 1)
        return {"FINISHED"}


class DREAMSMITH_OT_dismiss_message(bpy.types.Operator):
    """Hide the last error or message in the panel"""

    bl_idname = "dreamsmith.dismiss_message"
    bl_label = "Dismiss"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        session.STATE.last_error = ""
        session.STATE.last_message = ""
        return {"FINISHED"}


def _history_item(context: bpy.types.Context, index: int) -> properties.DreamsmithGeneration | None:
    history = properties.settings_of(context).history
    if 0 <= index < len(history):
        return history[index]  # type: ignore[no-any-return]
    return None


class DREAMSMITH_OT_import_again(bpy.types.Operator):
    """Import this generation's result again (from the local cache, or downloaded from the backend)"""

    bl_idname = "dreamsmith.import_again"
    bl_label = "Import Again"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Index", description="Position in the list of generations", default=-1)

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        index = self.index if self.index >= 0 else properties.settings_of(context).history_index
        item = _history_item(context, index)
        if item is None:
            self.report({"ERROR"}, "Select a generation in the list first.")
            return {"CANCELLED"}
        prefs = backend_settings(context)
        job_dir = prefs.cache_dir() / "jobs" / item.job_id
        request = GenerationRequest.from_json(json.loads(item.settings_json or "{}"))
        try:
            npz, texture = _cached_or_download(prefs, item.job_id, job_dir, request.export.texture == "uv")
            status = JobStatus(id=item.job_id, state="succeeded", elapsed_s=item.seconds)
            obj = import_downloaded(
                context, Downloaded(item.job_id, npz, texture, status), request, add_to_history=False
            )
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            session.STATE.last_error = str(exc)
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported '{obj.name}' again")
        return {"FINISHED"}


def _cached_or_download(
    prefs: BackendSettings, job_id: str, job_dir: Path, textured: bool
) -> tuple[Path, Path | None]:
    npz = job_dir / MESH_NPZ
    texture = job_dir / TEXTURE_PNG if textured else None
    client = prefs.client()
    try:
        if not npz.exists():
            client.download(job_id, MESH_NPZ, npz)
        if texture is not None and not texture.exists():
            client.download(job_id, TEXTURE_PNG, texture)
    except BackendError as exc:
        if exc.status == 404:
            raise BackendError(
                "This result is neither in the local cache nor on the backend any more; use "
                "'Use These Settings' and generate it again (same seed, same result on a CPU)."
            ) from exc
        raise
    return npz, texture


class DREAMSMITH_OT_use_settings(bpy.types.Operator):
    """Copy this generation's prompt and settings into the panel"""

    bl_idname = "dreamsmith.use_settings"
    bl_label = "Use These Settings"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Index", description="Position in the list of generations", default=-1)

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        settings = properties.settings_of(context)
        item = _history_item(context, self.index if self.index >= 0 else settings.history_index)
        if item is None:
            self.report({"ERROR"}, "Select a generation in the list first.")
            return {"CANCELLED"}
        try:
            request = GenerationRequest.from_json(json.loads(item.settings_json or "{}"))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self.report({"ERROR"}, f"The stored settings of this generation are unreadable ({exc}).")
            return {"CANCELLED"}
        properties.apply_request(settings, request)
        return {"FINISHED"}


class DREAMSMITH_OT_check_backend(bpy.types.Operator):
    """Ask the backend whether it is up, on which device, and which version"""

    bl_idname = "dreamsmith.check_backend"
    bl_label = "Check"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        try:
            health = backend_settings(context).client().health()
        except BackendError as exc:
            session.STATE.set_health(None, str(exc))
            self.report({"WARNING"}, str(exc))
            return {"CANCELLED"}
        session.STATE.set_health(health)
        self.report({"INFO"}, f"Dreamsmith backend: {health.summary()}")
        return {"FINISHED"}


class DREAMSMITH_OT_start_backend(bpy.types.Operator):
    """Start a local backend with the Python and folder set in the preferences"""

    bl_idname = "dreamsmith.start_backend"
    bl_label = "Start Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        proc = session.STATE.process
        return proc is None or not proc.alive()

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        prefs = backend_settings(context)
        try:
            client = prefs.client()
            if not client.is_local:
                raise BackendError(
                    f"The backend URL {client.url} points to another machine; start the backend there."
                )
            try:
                health = client.health()
            except BackendError:
                health = None
            if health is not None:
                session.STATE.set_health(health)
                self.report({"INFO"}, f"A backend is already running at {client.url}")
                return {"FINISHED"}
            proc = backend_process.start_backend(
                prefs.python(),
                prefs.arguments(),
                port=client.port,
                cwd=prefs.working_directory(),
                log_path=prefs.cache_dir() / "backend.log",
            )
        except BackendError as exc:
            session.STATE.set_health(None, str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        state = session.STATE
        state.process = proc
        state.backend_state = "starting"
        state.backend_text = "Backend starting..."
        state.backend_detail = f"pid {proc.pid}, log {proc.log_path}"
        if bpy.app.background:
            try:
                state.set_health(backend_process.wait_until_healthy(proc, client, BACKEND_START_TIMEOUT_S))
            except BackendError as exc:
                state.set_health(None, str(exc))
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
        else:
            _watch_start(proc, client)
        return {"FINISHED"}


def _watch_start(proc: backend_process.BackendProcess, client: BackendClient) -> None:
    """Poll the starting backend from a timer (one short call per tick) until it answers or dies."""
    deadline = time.monotonic() + BACKEND_START_TIMEOUT_S

    def tick() -> float | None:
        try:
            health = backend_process.check_started(proc, client)
        except BackendError as exc:
            session.STATE.set_health(None, str(exc))
            _redraw(None)
            return None
        if health is not None:
            session.STATE.set_health(health)
            _redraw(None)
            return None
        if time.monotonic() > deadline:
            proc.stop()
            session.STATE.set_health(
                None, f"The backend did not answer within {BACKEND_START_TIMEOUT_S:g} s."
            )
            _redraw(None)
            return None
        return TIMER_INTERVAL_S

    _WATCHERS.append(tick)
    bpy.app.timers.register(tick, first_interval=TIMER_INTERVAL_S)


# Start-up watchers still registered as timers; removed on unregister.
_WATCHERS: list[Any] = []


class DREAMSMITH_OT_stop_backend(bpy.types.Operator):
    """Stop the local backend started from Blender (jobs running on it are lost)"""

    bl_idname = "dreamsmith.stop_backend"
    bl_label = "Stop Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        proc = session.STATE.process
        return proc is not None and proc.alive()

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        proc = session.STATE.process
        if proc is not None:
            proc.stop()
        session.STATE.process = None
        session.STATE.set_health(None, "Stopped from Blender")
        return {"FINISHED"}


CLASSES = (
    DREAMSMITH_OT_generate,
    DREAMSMITH_OT_instant,
    DREAMSMITH_OT_refine,
    DREAMSMITH_OT_cancel,
    DREAMSMITH_OT_randomize_seed,
    DREAMSMITH_OT_dismiss_message,
    DREAMSMITH_OT_import_again,
    DREAMSMITH_OT_use_settings,
    DREAMSMITH_OT_check_backend,
    DREAMSMITH_OT_start_backend,
    DREAMSMITH_OT_stop_backend,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for watcher in _WATCHERS:
        if bpy.app.timers.is_registered(watcher):
            bpy.app.timers.unregister(watcher)
    _WATCHERS.clear()
    proc = session.STATE.process
    if proc is not None:
        proc.stop()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
