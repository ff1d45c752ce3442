"""Fuzz HTTP API v1 from its own OpenAPI schema with schemathesis (over the ASGI app).

Every generated request, valid or not, must get a non-5xx answer that matches the schema (documented
status, body shape, content type, Allow header, ...: schemathesis' default checks). Jobs go to an
instant fake engine, so the fuzzer exercises the queue and the job files too. Bounded: a fixed number
of examples per operation and generation mode, derandomized; the number of cases is reported.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from backend.fileio import write_bytes_atomic  # noqa: E402
from backend.service import create_app  # noqa: E402

EXAMPLES = 50
CASES: dict[str, int] = {}


def instant_engine(cfg, out_dir, on_progress=None, should_stop=None, priors=None, **options):  # noqa: ANN001
    out = Path(out_dir)
    write_bytes_atomic(out / "mesh.glb", b"glTF")
    write_bytes_atomic(out / "mesh.npz", b"PK")
    return SimpleNamespace(files={}, n_vertices=0, n_faces=0, seconds=0.0)


DATA_DIR = Path(tempfile.mkdtemp(prefix="dreamsmith-fuzz-"))
APP = create_app(DATA_DIR, generate=instant_engine, device="cpu")
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def worker(request: pytest.FixtureRequest) -> Iterator[None]:
    APP.state.worker.start()
    yield
    APP.state.worker.stop()
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nschemathesis: {sum(CASES.values())} cases over {len(CASES)} operations")


# Fields whose rules the request schema cannot state: a generator must be an existing generator folder,
# init_job an existing job with a field, and a Refine (init_job) cannot also ask for a generator.
REFERENCE_FIELDS = ("generator", "init_job")


def positive_data_accepted(ctx, response, case):  # noqa: ANN001, ANN201
    """Schema-valid data is accepted, except for the rules JSON Schema cannot state, each of which must be
    a 422 naming its field: [min, max] pairs with min > max (the schema cannot compare two items), and the
    references of REFERENCE_FIELDS (to folders and jobs the schema cannot know)."""
    if response.status_code == 422:
        error = response.json()["error"]
        field = error["field"] or ""
        if field.startswith("camera.") and "min must not exceed max" in error["message"]:
            return None
        if field in REFERENCE_FIELDS and error["message"].startswith(f"{field}: "):
            return None
    return positive_data_acceptance(ctx, response, case)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_answers_every_request_without_5xx(case) -> None:  # noqa: ANN001
    label = case.operation.label
    CASES[label] = CASES.get(label, 0) + 1
    case.call_and_validate(
        excluded_checks=[positive_data_acceptance], additional_checks=[positive_data_accepted]
    )
