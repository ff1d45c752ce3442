"""What the add-on knows right now that is not saved in the .blend: the running generation or variation
set, the last error, the backend's last known health, the preview images. Draw functions read only this (and the
scene's settings); operators and timers write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import bpy.utils.previews

from .client import Health
from .runner import GenerationRun
from .variations import VariationSet


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
    # The last "Generate Variations" (kept after it ends, until the next one or Clear), and its previews:
    # variation index -> (preview version loaded, icon id).
    variations: VariationSet | None = None
    variation_icons: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return (self.run is not None and not self.run.finished) or self.variations_running

    @property
    def variations_running(self) -> bool:
        return self.variations is not None and not self.variations.finished

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
_variation_previews: Any = None


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


def load_variation_preview(index: int, path: Path, version: int) -> int:
    """Load variation `index`'s preview (replacing its older one); returns its icon id (0: none)."""
    global _variation_previews
    if bpy.app.background:
        return 0
    if _variation_previews is None:
        _variation_previews = bpy.utils.previews.new()
    old = STATE.variation_icons.get(index)
    if old is not None and f"{index}-{old[0]}" in _variation_previews:
        del _variation_previews[f"{index}-{old[0]}"]  # releases the image (dict.pop would not)
    preview = _variation_previews.load(f"{index}-{version}", str(path), "IMAGE")
    STATE.variation_icons[index] = (version, int(preview.icon_id))
    return int(preview.icon_id)


def clear_variations() -> None:
    """Forget the variation set and its previews (its results stay in the History)."""
    STATE.variations = None
    STATE.variation_icons = {}
    if _variation_previews is not None:
        _variation_previews.clear()


def release() -> None:
    """Forget everything (unregister): stop holding previews, drop the run."""
    global _previews, _variation_previews, STATE
    for collection in (_previews, _variation_previews):
        if collection is not None:
            bpy.utils.previews.remove(collection)
    _previews = _variation_previews = None
    STATE = SessionState()
