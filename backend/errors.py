"""Errors a user can cause, each carrying a message that says what happened and what to do next."""

from __future__ import annotations


class DreamsmithError(Exception):
    """A problem the user can fix; its message is shown as is (no traceback)."""


class InvalidConfig(DreamsmithError):
    """A generation setting is out of range or of the wrong kind; `field` names it (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelLoadError(DreamsmithError):
    """The diffusion model could not be loaded (missing path, not a diffusers folder, missing part)."""


class GenerationCancelled(DreamsmithError):
    """The stop flag was raised; the generation ended cleanly without a result."""

    def __init__(self) -> None:
        super().__init__("generation was cancelled")


class NonFiniteLoss(DreamsmithError):
    """The optimization diverged (NaN / inf loss)."""
