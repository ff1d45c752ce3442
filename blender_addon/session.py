"""What the add-on knows right now that is not saved in the .blend: the running generation, the last
error, the backend's last known health, the preview image. Draw functions read only this (and the
scene's settings); operators and timers write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import bpy.utils.previews

from .client import Health
from .runner import GenerationRun


@dataclass
class SessionState:
    run: GenerationRun | None = None
    # Plain-words outcome of the last action, shown in the panel until the next one.
    last_error: str = ""
    last_message: str = ""
    backend_state: str = "unknown"  # unknown | starting | ok | down
    backend_text: str = "Backend not checked yet: press Check"
    backend_detail: str = ""
    health: Health | None = None
    # A backend_process.BackendProcess started from the preferences (stopped on unregister).
    process: Any = None
    # preferences.BackendSettings used when the add-on is imported as a plain package (scripts, tests).
    settings_override: Any = None
    preview_icon_id: int = 0
    preview_loaded_version: int = -1

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished

    def set_health(self, health: Health | None, error: str = "") -> None:
        self.health = health
        if health is not None:
            self.backend_state = "ok"
            self.backend_text = "Backend ready"
            self.backend_detail = health.summary()
        else:
            self.backend_state = "down"
            self.backend_text = "Backend not available"
            self.backend_detail = error


STATE = SessionState()
_previews: Any = None


def load_preview(path: Path, version: int) -> int:
    """Load the preview PNG into a preview collection and return its icon id (0 when unavailable)."""
    global _previews
    if bpy.app.background:
        return 0  # no UI to show it in
    if _previews is None:
        _previews = bpy.utils.previews.new()
    _previews.clear()
    # A fresh key per version makes Blender read the file again instead of reusing its icon.
    preview = _previews.load(f"preview-{version}", str(path), "IMAGE")
    STATE.preview_icon_id = int(preview.icon_id)
    STATE.preview_loaded_version = version
    return STATE.preview_icon_id


def release() -> None:
    """Forget everything (unregister): stop holding previews, drop the run."""
    global _previews, STATE
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
    STATE = SessionState()
