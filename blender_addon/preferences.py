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
from .client import DEFAULT_URL, BackendClient

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import IconItems

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
    """The status line: last known health, never fetched from here (draw code makes no network call)."""
    state = session.STATE
    layout.label(text=state.backend_text, icon=_STATE_ICONS.get(state.backend_state, "QUESTION"))
    if state.backend_detail:
        layout.label(text=state.backend_detail)


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


def unregister() -> None:
    bpy.utils.unregister_class(DreamsmithPreferences)
