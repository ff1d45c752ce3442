"""Dreamsmith: text-to-3D inside Blender.

The add-on sends a prompt to a local Dreamsmith backend over HTTP (`client.py` is the only file that
knows the wire), shows progress and previews while it optimizes, and builds the resulting mesh in
the scene. bpy, numpy and the Python standard library only.

Submodules are imported in `register()`, so `client` and `runner` stay importable without Blender.
"""

from __future__ import annotations

from types import ModuleType


def _modules() -> tuple[ModuleType, ...]:
    from . import live_preview, operators, panels, preferences, properties, variation_ops

    return (properties, preferences, operators, variation_ops, panels, live_preview)


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    from . import session

    for module in reversed(_modules()):
        module.unregister()
    session.release()
