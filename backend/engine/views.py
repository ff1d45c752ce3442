"""View-dependent prompts (DreamFusion): the suffix follows where the camera stands relative to the front."""

from __future__ import annotations

VIEWS = ("front", "side", "back", "overhead")
OVERHEAD_ELEVATION_DEG = 60.0


def relative_azimuth(azimuth_deg: float, front_azimuth_deg: float = 0.0) -> float:
    """Azimuth measured from the object's front, wrapped to (-180, 180]."""
    a = (azimuth_deg - front_azimuth_deg) % 360.0
    return a - 360.0 if a > 180.0 else a


def view_name(elevation_deg: float, azimuth_deg: float, front_azimuth_deg: float = 0.0) -> str:
    if elevation_deg > OVERHEAD_ELEVATION_DEG:
        return "overhead"
    a = abs(relative_azimuth(azimuth_deg, front_azimuth_deg))
    if a < 45.0:
        return "front"
    if a > 135.0:
        return "back"
    return "side"


def view_prompt(prompt: str, view: str) -> str:
    """'a red cube' + 'front' -> 'a red cube, front view' (the demo prior's captions use the same form)."""
    return f"{prompt.strip()}, {view} view"
