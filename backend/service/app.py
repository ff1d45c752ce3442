"""The FastAPI application of HTTP API v1: routes, error answers, and the worker's life cycle.

Routes that only read in-memory job state are `async` (they never block: the store's lock is held for
microseconds, never during I/O); routes that touch the disk are plain `def` and run in the thread pool.
Torch work happens only on the worker thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from backend import __version__
from backend.config import DEFAULT_METHOD, config_from_dict
from backend.errors import InvalidConfig
from backend.service.datalock import DataDirLock
from backend.service.guard import BODY_TIMEOUT_S, RequestGuard, token_problem
from backend.service.jobs import GenerateFn, JobStore, Worker, open_regular
from backend.service.schemas import (
    ARTIFACT_MEDIA_TYPES,
    ARTIFACTS,
    ApiError,
    ErrorResponse,
    Health,
    JobCreated,
    JobList,
    JobRequest,
    JobStatus,
)

LIVE_NPZ = "live.npz"
LIVE_STEP_HEADER = "X-Dreamsmith-Step"

log = logging.getLogger("dreamsmith.service")

MAX_BODY_BYTES = 64 * 1024
STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "invalid_request",
    422: "invalid_request",
}
NO_STORE = {"cache-control": "no-store"}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "malformed JSON",
        401: "missing or wrong token (only when the backend runs with one)",
        403: "request from a web page or addressed to a name this backend does not listen on",
        404: "no such job or artifact",
        408: "the request body did not arrive in time (code `timeout`)",
        409: "the job's state does not allow this",
        413: "request body too large",
        422: "invalid request; `field` names the offending field",
        503: "busy: every connection is in use (code `busy`), or the job could not be saved (code "
        "`storage_error`); retry later",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in (401, 403, *statuses, 503)}


def describe_device(device: str) -> str:
    """'cpu' or 'cuda:0 (NAME)' for the device jobs will run on."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    index = torch.device(device).index if device.startswith("cuda:") else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def check_generator(name: str) -> None:
    """422 naming `generator` unless it is a generator folder (one message whatever else the path is)."""
    from backend.engine.generator import GeneratorLoadError, resolve_generator

    try:
        resolve_generator(name)
    except GeneratorLoadError as exc:
        raise ApiError(422, "invalid_request", f"generator: {exc}", "generator") from None


def builtin_generators() -> list[dict[str, Any]]:
    """The built-in generators (GET /v1/health), read from their folders' records (no weights loaded)."""
    import json

    from backend.engine.generator import DEMO_GENERATOR_NAME, DEMO_GENERATOR_PATH, INFO_FILE, GeneratorInfo

    try:
        info = GeneratorInfo.from_dict(
            json.loads((DEMO_GENERATOR_PATH / INFO_FILE).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError, TypeError):
        return []
    return [
        {
            "name": DEMO_GENERATOR_NAME,
            "prompts": len(info.prompts),
            "examples": info.prompts[:3],
            "vocabulary": sorted(info.vocabulary),
            "method": info.method,
            "prior": info.prior,
        }
    ]


def create_app(
    data_dir: Path | str,
    *,
    token: str | None = None,
    device: str = "auto",
    generate: GenerateFn | None = None,
    priors: Any = None,
    allowed_hosts: Iterable[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    state_interval: float = 1.0,
    data_lock: DataDirLock | None = None,
) -> FastAPI:
    """Build the service for one data directory.

    `generate` defaults to the real engine (`backend.engine.pipeline.generate`); tests pass a fake.
    `allowed_hosts` (e.g. `guard.LOOPBACK_HOSTS`) restricts the Host header; None accepts any.
    The data folder's lock (`datalock.py`) is taken here before any job file is read, unless the caller
    holds it already (`data_lock`); raises DataDirBusy when another service has the folder.
    """
    if token and (problem := token_problem(token)):
        raise ValueError(f"the token {problem}")
    owns_lock = data_lock is None
    lock = data_lock or DataDirLock(Path(data_dir)).acquire()
    try:
        store = JobStore(Path(data_dir))
        store.load()
        worker = Worker(store, generate=generate, priors=priors, device=device, state_interval=state_interval)
        device_name = describe_device(device)
    except BaseException:
        if owns_lock:
            lock.release()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            stopped = await anyio.to_thread.run_sync(worker.stop)
            # A worker still running a job may still write: keep the folder locked until it ends.
            if owns_lock and stopped:
                lock.release()

    app = FastAPI(
        title="Dreamsmith backend",
        version=__version__,
        summary="Text-to-3D by score distillation: HTTP API v1 used by the Blender add-on.",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN: blank offline, and third-party
        # code in the API's origin. No installed package ships those assets, so only the schema is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    app.state.worker = worker
    app.state.device_name = device_name
    app.add_middleware(
        RequestGuard,
        token=token,
        allowed_hosts=allowed_hosts,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
    )
    _add_error_handlers(app)

    @app.get("/v1/health", response_model=Health, responses=_errors())
    async def health() -> dict[str, Any]:
        """Version, device, methods and models; also the cheapest way to check the backend is up."""
        from backend.engine.methods import METHODS

        return {
            "status": "ok",
            "version": __version__,
            "device": device_name,
            "methods": list(METHODS),
            "method_details": [m.info() for m in METHODS.values()],
            "default_method": DEFAULT_METHOD,
            "models": {"default": "demo", "loaded": list(worker.loaded_models)},
            "generators": builtin_generators(),
            "queue": store.queued(),
        }

    @app.post("/v1/jobs", status_code=201, response_model=JobCreated, responses=_errors(400, 408, 413, 422))
    def submit_job(request: JobRequest) -> dict[str, Any]:
        """Validate a generation request and queue it; jobs run one at a time, oldest first."""
        data = request.model_dump(mode="json")
        cfg = config_from_dict(data)  # the engine's own checks (e.g. min <= max); InvalidConfig -> 422
        if cfg.generator is not None:
            check_generator(cfg.generator)
        if cfg.init_job is not None:
            store.check_init_job(cfg.init_job)
        return store.submit(data)

    @app.get("/v1/jobs", response_model=JobList, responses=_errors())
    async def list_jobs() -> dict[str, Any]:
        """All jobs, newest first."""
        return {"jobs": store.list()}

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=_errors(404))
    async def job_status(job_id: str) -> dict[str, Any]:
        """State, phase, step, loss, elapsed and ETA, error message and the artifact names available now."""
        return store.status(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus, responses=_errors(404, 408, 409))
    def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued job now, or a running one within seconds in any phase; it then ends `cancelled`
        (409 once the job has succeeded or failed)."""
        return store.cancel(job_id)

    @app.delete(
        "/v1/jobs/{job_id}", status_code=204, response_class=Response, responses=_errors(404, 408, 409)
    )
    def delete_job(job_id: str) -> Response:
        """Delete a job that is not running, with its files."""
        store.delete(job_id)
        return Response(status_code=204)

    for name in ARTIFACTS:
        _add_artifact_route(app, store, name)

    @app.get(
        f"/v1/jobs/{{job_id}}/{LIVE_NPZ}",
        response_class=Response,
        responses={
            200: {
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                "headers": {LIVE_STEP_HEADER: {"description": "the step the mesh belongs to"}},
            },
            **_errors(404),
        },
    )
    async def get_live_npz(job_id: str) -> Response:
        """The running job's latest live mesh (`live_every`): mesh.npz's arrays plus `step`, always a whole
        file; its step also in the `X-Dreamsmith-Step` header. 404 before the first one and once the job
        has ended (its result replaces it)."""
        step, data = store.live_mesh(job_id)
        return Response(
            data, media_type="application/octet-stream", headers={**NO_STORE, LIVE_STEP_HEADER: str(step)}
        )

    return app


def _add_artifact_route(app: FastAPI, store: JobStore, name: str) -> None:
    media_type = ARTIFACT_MEDIA_TYPES[name]

    def get_artifact(job_id: str) -> Response:
        live, path = store.artifact(job_id, name)
        if live is not None:
            return Response(live, media_type=media_type, headers=NO_STORE)
        try:
            f = open_regular(path)  # closed by _chunks once sent; never through a link
        except FileNotFoundError:
            raise ApiError(404, "not_found", f"this job has no {name}") from None
        except OSError as exc:
            raise ApiError(503, "storage_error", f"could not read the job's {name}: {exc.strerror}") from None
        size = os.fstat(f.fileno()).st_size
        headers = {**NO_STORE, "content-length": str(size)}
        return StreamingResponse(_chunks(f), media_type=media_type, headers=headers)

    get_artifact.__name__ = "get_" + name.replace(".", "_")
    get_artifact.__doc__ = f"Download the job's {name} (404 until it exists)."
    app.get(
        f"/v1/jobs/{{job_id}}/{name}",
        response_class=Response,
        responses={
            200: {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(404),
        },
    )(get_artifact)


def _chunks(f: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with f:
        while chunk := f.read(size):
            yield chunk


def _error_response(
    status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_answer(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return _error_response(422, "invalid_request", "invalid request")
    err = errors[0]
    loc = list(err.get("loc", ()))
    if loc and loc[0] in ("body", "path", "query"):
        loc = loc[1:]
    kind = err.get("type", "")
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return _error_response(400, "invalid_request", f"the request body is not valid JSON ({detail})")
    if not loc and isinstance(err.get("input"), bytes):  # body not parsed: no JSON content type
        return _error_response(
            400, "invalid_request", "send the request body as JSON with 'Content-Type: application/json'"
        )
    if not loc:
        message = 'the request body must be a JSON object with at least a "prompt"'
        return _error_response(422, "invalid_request", message)
    field = ".".join(str(p) for p in loc if not isinstance(p, int))
    messages = {"missing": "is required", "extra_forbidden": "unknown field"}
    message = messages.get(kind) or str(err.get("msg", "is invalid"))
    return _error_response(422, "invalid_request", f"{field}: {message}", field)


def _path_methods(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(InvalidConfig)
    async def invalid_config(request: Request, exc: InvalidConfig) -> JSONResponse:
        return _error_response(422, "invalid_request", str(exc), exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_answer(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal")
        message = {404: "no such endpoint; see /openapi.json for API v1", 405: "method not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list every method of the path.
            headers["Allow"] = ", ".join(sorted(_path_methods(request)))
        return _error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, never user input: log it with its traceback, answer without one.
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(500, "internal", "internal error in the backend; see its log")
