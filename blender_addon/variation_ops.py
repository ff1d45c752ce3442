# mypy: disable-error-code="valid-type"
# (Blender declares properties as annotations that are calls, which type checkers cannot read.)
"""Operators of "Generate Variations": queue N seeds (modal, non-blocking), import one or all of them,
clear the list. The Cancel button (`operators.py`) stops a running set too."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import bpy
from bpy.props import IntProperty

from . import session
from .client import BackendError
from .generation import Target, import_variation, new_variations
from .operators import TimedModal, _redraw
from .variations import VariationSet

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems

# Gap between variations imported in a row, in object sizes.
ROW_SPACING = 1.5
HEADLESS_POLL_S = 0.5


def _start(context: bpy.types.Context, operator: bpy.types.Operator, *, fetch_previews: bool) -> bool:
    state = session.STATE
    state.last_error = ""
    state.last_message = ""
    session.clear_variations()
    try:
        variations = new_variations(context, fetch_previews=fetch_previews)
        variations.start()
    except BackendError as exc:
        state.last_error = str(exc)
        if exc.unreachable:
            state.set_health(None, str(exc))
        operator.report({"ERROR"}, str(exc))
        return False
    state.variations = variations
    return True


def _load_previews(variations: VariationSet) -> None:
    for i, run in enumerate(variations.runs):
        loaded = session.STATE.variation_icons.get(i)
        if run.preview_path is not None and (loaded is None or loaded[0] != run.preview_version):
            with contextlib.suppress(OSError, RuntimeError, KeyError):  # not worth stopping for
                session.load_variation_preview(i, run.preview_path, run.preview_version)


def _finish(operator: bpy.types.Operator, variations: VariationSet) -> set[OperatorReturnItems]:
    state = session.STATE
    ready = len(variations.succeeded())
    failed = [run for run in variations.runs if run.outcome == "failed"]
    if variations.cancelled:
        state.last_message = f"Variations cancelled; {ready} ready to import"
        operator.report({"WARNING"}, f"Dreamsmith: {state.last_message}")
        return {"CANCELLED"}
    state.last_message = f"{ready} of {len(variations.runs)} variations ready: import the ones you want"
    if failed:
        state.last_error = f"Seed {failed[0].request.seed} failed: {failed[0].error or 'no details'}"
        operator.report({"WARNING"}, state.last_error)
    else:
        operator.report({"INFO"}, f"Dreamsmith: {state.last_message}")
    return {"FINISHED"} if ready else {"CANCELLED"}


class DREAMSMITH_OT_generate_variations(TimedModal, bpy.types.Operator):
    """Queue one job per seed (Seed, Seed + 1, ...) with the panel's settings; import the ones you like"""

    bl_idname = "dreamsmith.generate_variations"
    bl_label = "Generate Variations"
    bl_options = {"REGISTER"}

    _variations: VariationSet | None = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not session.STATE.running

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        if not _start(context, self, fetch_previews=True):
            return {"CANCELLED"}
        self._variations = session.STATE.variations
        return self._run_modal(context)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        variations = self._variations
        if variations is None:
            return {"CANCELLED"}
        wake = self._wake(event)
        if wake == "skip":
            return {"PASS_THROUGH"}
        if wake == "escape":
            variations.request_cancel()
        variations.tick()  # at most one short HTTP call
        _load_previews(variations)
        _redraw(context)
        if not variations.finished:
            return {"RUNNING_MODAL"}
        self._remove_timer(context)
        return _finish(self, variations)

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        """Blocking (scripts, `blender --background`): the same ticks in a loop."""
        if not _start(context, self, fetch_previews=False):
            return {"CANCELLED"}
        variations = session.STATE.variations
        assert variations is not None
        try:
            while not variations.tick():
                if variations.waiting_on_backend:
                    time.sleep(HEADLESS_POLL_S)
        except KeyboardInterrupt:
            variations.cancel_now()
            raise
        return _finish(self, variations)

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender ends modal operators itself when a file is loaded or the window closes.
        if self._variations is not None and not self._variations.finished:
            self._variations.cancel_now()
        self._remove_timer(context)


class DREAMSMITH_OT_import_variation(bpy.types.Operator):
    """Import this variation at the 3D cursor where the variations started; with no index, import every
    finished variation in a row along X"""

    bl_idname = "dreamsmith.import_variation"
    bl_label = "Import Variation"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(
        name="Index",
        description="Which variation (0 = the first); -1 imports all of them in a row",
        default=-1,
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        variations = session.STATE.variations
        return variations is not None and bool(variations.succeeded())

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        variations = session.STATE.variations
        if variations is None:
            self.report({"ERROR"}, "Generate variations first.")
            return {"CANCELLED"}
        target = variations.target if isinstance(variations.target, Target) else Target.of(context)
        size = context.scene.dreamsmith.object_size if context.scene is not None else 1.0  # type: ignore[attr-defined]
        if self.index >= 0:
            chosen = [(self.index, target)]
        else:  # all of them, side by side along X from where the set started
            chosen = [
                (i, target.shifted(k * ROW_SPACING * size)) for k, i in enumerate(variations.succeeded())
            ]
        names = []
        try:
            for index, where in chosen:
                names.append(import_variation(context, variations, index, where).name)
        except BackendError as exc:
            session.STATE.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        session.STATE.last_message = f"Imported {', '.join(repr(n) for n in names)}"
        self.report({"INFO"}, session.STATE.last_message)
        return {"FINISHED"}  # one undo step (the UNDO flag) for all of them


class DREAMSMITH_OT_clear_variations(bpy.types.Operator):
    """Hide the list of variations (their results stay in the History)"""

    bl_idname = "dreamsmith.clear_variations"
    bl_label = "Clear Variations"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return session.STATE.variations is not None and not session.STATE.variations_running

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        session.clear_variations()
        return {"FINISHED"}


CLASSES = (
    DREAMSMITH_OT_generate_variations,
    DREAMSMITH_OT_import_variation,
    DREAMSMITH_OT_clear_variations,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    variations = session.STATE.variations
    if variations is not None and not variations.finished:
        with contextlib.suppress(BackendError):
            variations.cancel_now()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
