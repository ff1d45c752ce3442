"""The "Dreamsmith" tab in the 3D viewport sidebar. Draw code reads the scene settings and the session
state only: it never calls the network (the modal operator's timer does that).
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import bpy

from . import properties, session
from .preferences import draw_backend_status

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import IconItems


def _wrapped(
    layout: bpy.types.UILayout, context: bpy.types.Context, text: str, icon: IconItems = "NONE"
) -> None:
    """Labels do not wrap in Blender: split long messages by the sidebar's width."""
    region = context.region
    width = region.width if region is not None else 300
    chars = max(20, int(width / 7))
    for i, line in enumerate(textwrap.wrap(text, chars, break_on_hyphens=False) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


class DreamsmithPanel(bpy.types.Panel):
    """Shared by the tab's panels (never registered itself)."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Dreamsmith"

    def ui(self) -> bpy.types.UILayout:
        layout = self.layout
        assert layout is not None, "draw() runs with a layout"
        return layout


class DREAMSMITH_PT_main(DreamsmithPanel):
    bl_idname = "DREAMSMITH_PT_main"
    bl_label = "Dreamsmith"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        settings = properties.settings_of(context)
        state = session.STATE

        col = layout.column()
        col.prop(settings, "prompt", text="", placeholder="Prompt, e.g. a red cube")
        col.prop(settings, "negative_prompt", text="", placeholder="Negative prompt (optional)")

        row = layout.row(align=True)
        row.scale_y = 1.4
        if state.running:
            row.operator("dreamsmith.cancel", text="Cancel", icon="CANCEL")
        else:
            row.operator("dreamsmith.generate", text="Generate", icon="PLAY")
            row.operator("dreamsmith.instant", text="Instant", icon="LIGHT_SUN")
            row.operator("dreamsmith.refine", text="Refine", icon="MODIFIER")

        run = state.run
        if run is not None and state.running:
            status = run.status
            factor = status.progress if status is not None else 0.0
            layout.progress(factor=factor, type="BAR", text=run.describe())
            if status is not None and status.loss is not None:
                layout.label(text=f"loss {status.loss:.4g}", icon="GRAPH")
        variations = state.variations
        if variations is not None and state.variations_running:
            layout.progress(factor=variations.progress, type="BAR", text=variations.describe())
        if state.preview_icon_id:
            box = layout.box()
            box.template_icon(icon_value=state.preview_icon_id, scale=8.0)

        if state.last_error:
            box = layout.box()
            box.alert = True
            _wrapped(box, context, state.last_error, icon="ERROR")
            box.operator("dreamsmith.dismiss_message", text="Dismiss", icon="X")
        elif state.last_message:
            _wrapped(layout, context, state.last_message, icon="INFO")


class DREAMSMITH_PT_method(DreamsmithPanel):
    bl_idname = "DREAMSMITH_PT_method"
    bl_label = "Model & Method"
    bl_parent_id = "DREAMSMITH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = properties.settings_of(context)
        layout.prop(s, "model", placeholder="demo prior")
        layout.prop(s, "generator", text="Instant Generator", placeholder="demo")
        layout.prop(s, "method")
        layout.prop(s, "steps", text="Steps (0 = default)")
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.operator("dreamsmith.randomize_seed", text="", icon="FILE_REFRESH")
        layout.prop(s, "guidance_scale", text="Guidance (0 = default)")
        layout.prop(s, "render_size", text="Render Size (0 = default)")
        layout.prop(s, "preview_every")
        layout.prop(s, "live_every", text="Live Mesh Every (0 = off)")


class DREAMSMITH_PT_camera(DreamsmithPanel):
    bl_idname = "DREAMSMITH_PT_camera"
    bl_label = "Camera"
    bl_parent_id = "DREAMSMITH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        s = properties.settings_of(context)
        for label, low, high in (
            ("Elevation", "elevation_min", "elevation_max"),
            ("Azimuth", "azimuth_min", "azimuth_max"),
            ("Distance", "distance_min", "distance_max"),
            ("Field of View", "fov_min", "fov_max"),
        ):
            layout.label(text=label)
            row = layout.row(align=True)
            row.prop(s, low, text="Min")
            row.prop(s, high, text="Max")
        layout.prop(s, "front_from_camera")
        if s.front_from_camera and properties.scene_of(context).camera is None:
            layout.label(text="The scene has no active camera", icon="ERROR")


class DREAMSMITH_PT_export(DreamsmithPanel):
    bl_idname = "DREAMSMITH_PT_export"
    bl_label = "Export"
    bl_parent_id = "DREAMSMITH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = properties.settings_of(context)
        layout.prop(s, "mesh_resolution")
        layout.prop(s, "target_faces")
        layout.prop(s, "smoothing")
        layout.prop(s, "auto_level")
        layout.prop(s, "texture")
        row = layout.row()
        row.active = s.texture == "uv"
        row.prop(s, "texture_size")
        layout.prop(s, "object_size")


class DREAMSMITH_PT_backend(DreamsmithPanel):
    bl_idname = "DREAMSMITH_PT_backend"
    bl_label = "Backend"
    bl_parent_id = "DREAMSMITH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        draw_backend_status(layout)
        row = layout.row(align=True)
        row.operator("dreamsmith.check_backend", icon="FILE_REFRESH")
        row.operator("dreamsmith.start_backend", text="Start", icon="PLAY")
        row.operator("dreamsmith.stop_backend", text="Stop", icon="PAUSE")


class DREAMSMITH_UL_history(bpy.types.UIList):
    """One row per generation: prompt, method and seed."""

    def draw_item(
        self,
        context: bpy.types.Context | None,
        layout: bpy.types.UILayout,
        data: Any | None,
        item: Any | None,
        icon: int | None,
        active_data: Any,
        active_property: str | None,
        index: int | None,
        flt_flag: int | None,
    ) -> None:
        row = layout.row(align=True)
        if item is None:
            return
        row.label(text=item.prompt or "(no prompt)", icon="MESH_MONKEY")
        row.label(text=f"{item.method} #{item.seed}")


def _with_index(op: bpy.types.OperatorProperties | None, index: int) -> None:
    if op is not None:  # None only when the operator is not registered
        op.index = index


class DREAMSMITH_PT_history(DreamsmithPanel):
    bl_idname = "DREAMSMITH_PT_history"
    bl_label = "History"
    bl_parent_id = "DREAMSMITH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        s = properties.settings_of(context)
        if not len(s.history):
            layout.label(text="No generations in this file yet")
            return
        layout.template_list("DREAMSMITH_UL_history", "", s, "history", s, "history_index", rows=3)
        if 0 <= s.history_index < len(s.history):
            item = s.history[s.history_index]
            col = layout.column(align=True)
            col.label(text=f"{item.n_vertices} vertices, {item.n_faces} faces, {item.seconds:.0f} s")
            col.label(text=f"model: {item.model or 'demo'}  job: {item.job_id[:12]}")
            row = layout.row(align=True)
            _with_index(row.operator("dreamsmith.import_again", icon="IMPORT"), s.history_index)
            _with_index(row.operator("dreamsmith.use_settings", icon="PRESET"), s.history_index)


class DREAMSMITH_PT_variations(DreamsmithPanel):
    """Generate N seeds at once; each one's progress and preview; import the ones you like."""

    bl_idname = "DREAMSMITH_PT_variations"
    bl_label = "Variations"
    bl_parent_id = "DREAMSMITH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.ui()
        s = properties.settings_of(context)
        state = session.STATE
        row = layout.row(align=True)
        row.prop(s, "variations", text="Seeds")
        row.operator("dreamsmith.generate_variations", text=f"Generate {s.variations}", icon="PLAY")
        last = (s.seed + s.variations - 1) % 2**31
        layout.label(text=f"Seeds {s.seed} to {last}, the rest as set above", icon="INFO")
        variations = state.variations
        if variations is None:
            return
        for i, run in enumerate(variations.runs):
            box = layout.box()
            row = box.row(align=True)
            row.label(text=f"Seed {run.request.seed}", icon="MESH_MONKEY")
            imported = variations.imported.get(i)
            if run.outcome == "succeeded":
                op = row.operator(
                    "dreamsmith.import_variation",
                    text="Import Again" if imported else "Import",
                    icon="IMPORT",
                )
                _with_index(op, i)
            elif run.finished:
                row.label(text=run.outcome, icon="CANCEL" if run.outcome == "cancelled" else "ERROR")
                if run.error:
                    _wrapped(box, context, run.error)
            else:
                status = run.status
                factor = status.progress if status is not None else 0.0
                box.progress(factor=factor, type="BAR", text=run.describe())
            icon = state.variation_icons.get(i)
            if icon is not None and icon[1]:
                box.template_icon(icon_value=icon[1], scale=5.0)
            if imported:
                box.label(text=f"Imported as '{imported}'", icon="CHECKMARK")
        row = layout.row(align=True)
        _with_index(
            row.operator("dreamsmith.import_variation", text="Import All in a Row", icon="IMPORT"), -1
        )
        row.operator("dreamsmith.clear_variations", text="Clear", icon="X")


CLASSES = (
    DREAMSMITH_PT_main,
    DREAMSMITH_PT_method,
    DREAMSMITH_PT_camera,
    DREAMSMITH_PT_export,
    DREAMSMITH_PT_variations,
    DREAMSMITH_PT_backend,
    DREAMSMITH_UL_history,
    DREAMSMITH_PT_history,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
