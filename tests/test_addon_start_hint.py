"""No backend answers and no Python is set: the Backend panel and the preferences show the one command to
run (with a copy button) instead of a bare error (real Blender through the bpy wheel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import preferences, session  # noqa: E402
from blender_addon.preferences import BackendSettings  # noqa: E402

ERROR = "Dreamsmith backend is not reachable at http://127.0.0.1:8765 (connection refused)"


class Layout:
    """Records labels and operators; anything else returns another recording layout."""

    def __init__(self, log: list[tuple[str, str, Any]]) -> None:
        self.log = log

    def label(self, text: str = "", icon: str = "NONE") -> None:
        self.log.append(("label", text, icon))

    def operator(self, idname: str, text: str = "", icon: str = "NONE") -> Any:
        module, name = idname.split(".")
        getattr(getattr(bpy.ops, module), name).get_rna_type()  # registered, or this raises
        props = type("Props", (), {})()
        self.log.append(("operator", idname, props))
        return props

    def row(self, align: bool = False) -> Layout:
        return self


@pytest.fixture(autouse=True)
def addon() -> Iterator[None]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    session.STATE = session.SessionState()
    yield
    blender_addon.unregister()


def drawn(settings: BackendSettings) -> list[tuple[str, str, Any]]:
    session.STATE.settings_override = settings
    session.STATE.set_health(None, ERROR)
    log: list[tuple[str, str, Any]] = []
    preferences.draw_backend_status(Layout(log))  # type: ignore[arg-type]
    return log


def test_no_python_shows_the_command_with_a_copy_button() -> None:
    log = drawn(BackendSettings())
    labels = [text for kind, text, _ in log if kind == "label"]
    assert "dreamsmith serve" in labels and ERROR not in labels
    (copy,) = [
        props for kind, idname, props in log if kind == "operator" and idname == "dreamsmith.copy_command"
    ]
    assert copy.text == "dreamsmith serve"
    assert bpy.ops.dreamsmith.copy_command(text="dreamsmith serve") == {"FINISHED"}


def test_another_port_is_in_the_command() -> None:
    labels = [
        text for kind, text, _ in drawn(BackendSettings(url="http://127.0.0.1:8799")) if kind == "label"
    ]
    assert "dreamsmith serve --port 8799" in labels


def test_with_a_python_or_a_remote_backend_the_error_stays(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("")
    for settings in (
        BackendSettings(python_executable=str(python)),  # Start can start one
        BackendSettings(url="http://192.0.2.1:8765"),  # on another machine: a command here would not help
    ):
        labels = [text for kind, text, _ in drawn(settings) if kind == "label"]
        assert ERROR in labels and not any("dreamsmith serve" in t for t in labels)
    # A backend folder with its .venv counts as a Python too.
    (tmp_path / "repo" / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "repo" / ".venv" / "bin" / "python").write_text("")
    labels = [text for kind, text, _ in drawn(BackendSettings(backend_directory=str(tmp_path / "repo")))]
    assert ERROR in labels
