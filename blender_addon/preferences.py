# mypy: disable-error-code="valid-type"
# (Blender declares properties as annotations that are calls, which type checkers cannot read.)
"""Add-on preferences: where the backend is, its token, and how to start one on this machine."""

from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import bpy
from bpy.props import StringProperty

from . import session
from .client import DEFAULT_URL, BackendClient, BackendError

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import IconItems, OperatorReturnItems

_STATE_ICONS: dict[str, IconItems] = {"ok": "CHECKMARK", "starting": "SORTTIME", "down": "ERROR"}


class DreamsmithPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_url: StringProperty(
        name="Backend URL",
        description="Address of the Dreamsmith backend's HTTP API",
        default=DEFAULT_URL,
    )
    token: StringProperty(
        name="Token",
        description="Sent as 'Authorization: Bearer TOKEN'; must match the backend's --token (empty: none)",
        subtype="PASSWORD",
    )
    backend_directory: StringProperty(
        name="Backend Folder",
        description="Folder of the Dreamsmith backend (the repository with the 'backend' package); "
        "the local backend is started there",
        subtype="DIR_PATH",
    )
    python_executable: StringProperty(
        name="Python",
        description="Python that has the backend's packages (torch, diffusers). Empty: the folder's "
        ".venv/bin/python, else python3",
        subtype="FILE_PATH",
    )
    backend_arguments: StringProperty(
        name="Arguments",
        description="Arguments after the Python executable; the port from the URL is appended as --port N",
        default="-m backend serve",
    )
    cache_directory: StringProperty(
        name="Cache Folder",
        description="Where downloaded results and previews are kept (empty: the extension's user folder)",
        subtype="DIR_PATH",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_url")
        col.prop(self, "token")
        col.prop(self, "cache_directory")

        box = layout.box()
        box.label(text="Local backend", icon="CONSOLE")
        box.prop(self, "backend_directory")
        box.prop(self, "python_executable")
        box.prop(self, "backend_arguments")
        row = box.row(align=True)
        row.operator("dreamsmith.start_backend", icon="PLAY")
        row.operator("dreamsmith.stop_backend", icon="PAUSE")
        row.operator("dreamsmith.check_backend", icon="FILE_REFRESH")
        draw_backend_status(box)


def draw_backend_status(layout: bpy.types.UILayout) -> None:
    """The status line: last known health, never fetched from here (draw code makes no network call).

    When no backend answered and there is no Python to start one with, it shows the one command that
    starts a backend in a terminal, with a button that copies it."""
    state = session.STATE
    layout.label(text=state.backend_text, icon=_STATE_ICONS.get(state.backend_state, "QUESTION"))
    command = start_command(backend_settings()) if state.backend_state == "down" else None
    if command is not None:
        layout.label(text="Start one in a terminal where Dreamsmith is installed:")
        row = layout.row(align=True)
        row.label(text=command, icon="CONSOLE")
        op = row.operator("dreamsmith.copy_command", text="", icon="COPYDOWN")
        if op is not None:
            op.text = command
        layout.label(text="(not installed yet: pip install . in its folder), then press Check")
    elif state.backend_detail:
        layout.label(text=state.backend_detail)


def start_command(settings: BackendSettings) -> str | None:
    """`dreamsmith serve [--port N]` for a backend URL on this machine when no Python is set to start one
    with (none in the preferences, no .venv in the backend folder); None otherwise."""
    if settings.has_python():
        return None
    try:
        client = settings.client()
    except BackendError:
        return None
    if not client.is_local:
        return None
    return "dreamsmith serve" + ("" if client.port == 8765 else f" --port {client.port}")


class DREAMSMITH_OT_copy_command(bpy.types.Operator):
    """Copy this command, to paste it into a terminal"""

    bl_idname = "dreamsmith.copy_command"
    bl_label = "Copy Command"
    bl_options = {"INTERNAL"}

    text: StringProperty(name="Command", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        if context.window_manager is not None:
            context.window_manager.clipboard = self.text
        self.report({"INFO"}, f"Copied: {self.text}")
        return {"FINISHED"}


@dataclass
class BackendSettings:
    """Preferences as plain values, with defaults when the add-on is not installed as an extension."""

    url: str = DEFAULT_URL
    token: str = ""
    backend_directory: str = ""
    python_executable: str = ""
    backend_arguments: str = "-m backend serve"
    cache_directory: str = ""

    def client(self) -> BackendClient:
        return BackendClient(self.url, self.token)

    def has_python(self) -> bool:
        """A Python is set, or the backend folder has a .venv (else `python` falls back to python3)."""
        return self.python() not in ("python3", "python")

    def python(self) -> str:
        if self.python_executable.strip():
            return bpy.path.abspath(self.python_executable.strip())
        if self.backend_directory.strip():
            for candidate in (".venv/bin/python", ".venv/Scripts/python.exe"):
                path = Path(bpy.path.abspath(self.backend_directory)) / candidate
                if path.exists():
                    return str(path)
        return "python3" if sys.platform != "win32" else "python"

    def arguments(self) -> list[str]:
        return shlex.split(self.backend_arguments)

    def working_directory(self) -> str | None:
        return bpy.path.abspath(self.backend_directory) if self.backend_directory.strip() else None

    def cache_dir(self) -> Path:
        if self.cache_directory.strip():
            path = Path(bpy.path.abspath(self.cache_directory))
        else:
            try:
                path = Path(
                    bpy.utils.extension_path_user(__package__ or "dreamsmith", path="cache", create=True)
                )
            except ValueError:  # imported as a plain package (scripts, tests): not an extension
                path = Path(tempfile.gettempdir()) / "dreamsmith-cache"
        path.mkdir(parents=True, exist_ok=True)
        return path


def backend_settings(context: bpy.types.Context | None = None) -> BackendSettings:
    context = context or bpy.context
    user_prefs = context.preferences
    addon = user_prefs.addons.get(__package__ or "") if user_prefs is not None else None
    prefs = getattr(addon, "preferences", None) if addon is not None else None
    if not isinstance(prefs, DreamsmithPreferences):
        return session.STATE.settings_override or BackendSettings()
    return BackendSettings(
        url=prefs.backend_url,
        token=prefs.token,
        backend_directory=prefs.backend_directory,
        python_executable=prefs.python_executable,
        backend_arguments=prefs.backend_arguments,
        cache_directory=prefs.cache_directory,
    )


def register() -> None:
    bpy.utils.register_class(DreamsmithPreferences)
    bpy.utils.register_class(DREAMSMITH_OT_copy_command)


def unregister() -> None:
    bpy.utils.unregister_class(DREAMSMITH_OT_copy_command)
    bpy.utils.unregister_class(DreamsmithPreferences)
