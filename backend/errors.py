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


class OutputError(DreamsmithError):
    """A result file could not be written (disk full, read-only folder, a file where a folder should be);
    the message names the path and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"could not write {path}: {reason}")
        self.path = path

    @classmethod
    def from_os_error(cls, path: object, exc: OSError) -> OutputError:
        import errno

        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return cls(path, f"{reason}; free some disk space or choose another output folder")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return cls(path, f"{reason}; choose an output folder you can write to")
        if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            return cls(path, f"{reason}; a file is in the way of the output folder")
        return cls(path, reason)
