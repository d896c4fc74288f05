"""The HTTP API and the page: a FastAPI app over one model and its batch queue.

    POST /v1/segment?task=panoptic|instance|semantic|all[&format=json|png][&png=true]
         body: an image, raw or as a multipart file field
    GET  /v1/model     classes, tasks, input size and intensity rules, limits, version
    GET  /healthz      {"status": "ok", ...}
    GET  /metrics      Prometheus text: requests, errors, latency, queue depth, batch sizes
    GET  /             the page (oneseg/serve/page): upload, overlay, legend, downloads

Every refusal is a JSON object {"error": "one line"} with its status (see `upload`): 401 a
missing or wrong X-API-Key, 413 / 415 / 422 the upload, 503 a full queue, 504 a timeout.
Decoding and JSON building run in worker threads, inference in the queue's thread: the event
loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from oneseg.serve.batching import BatchQueue, QueueFull
from oneseg.serve.metrics import ServeMetrics
from oneseg.serve.responses import PNG_TASKS, result_json, result_png
from oneseg.serve.upload import UploadError, decode_image

PAGE_DIR = Path(__file__).parent / "page"
FORMATS = ("json", "png")
# the image is the body (raw) or a multipart file field; shown so on the /docs page
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@dataclass
class ServeLimits:
    """What one request may be and take.

    Attributes:
        max_request_bytes: body size at most (413).
        max_image_pixels: width x height at most (413); 0 = PIL's default guard only.
        min_image_side: shortest side at least (422).
        timeout_s: time from the queue to the answer (504).
        api_key: required in X-API-Key when not empty.
    """

    max_request_bytes: int
    max_image_pixels: int
    min_image_side: int
    timeout_s: float
    api_key: str = ""


def error(status: int, message: str) -> JSONResponse:
    """The one form of every refusal."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def create_app(model_info: dict, queue: BatchQueue, limits: ServeLimits, intensity=None):
    """The app serving `queue`'s model.

    Arguments:
        model_info: what GET /v1/model answers (must hold "tasks").
        queue: runs images; started and stopped with the app (lifespan).
        intensity: how images of more than 8 bits become 0-255 (the model's rule).
    """
    metrics = ServeMetrics(queue)
    queue.on_batch = metrics.batch_sizes.observe

    async def lifespan(app):
        queue.start()
        yield
        await run_in_threadpool(queue.stop)  # what is queued is answered before the exit

    app = FastAPI(title="oneseg", version=model_info.get("version", ""), lifespan=lifespan)
    app.state.metrics = metrics
    _add_handlers(app, limits, metrics)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "api_key_required": bool(limits.api_key)}

    @app.get("/v1/model")
    async def model():
        return model_info

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/segment", openapi_extra=UPLOAD_BODY)
    async def segment(
        request: Request,
        task: str = Query("panoptic", description="panoptic, instance, semantic or all"),
        format: str = Query("json", description="json, or png (panoptic or semantic only)"),
        png: bool = Query(False, description="json: add the PNG (base64) to panoptic/semantic"),
    ):
        tasks = _tasks(task, model_info["tasks"])
        _check_format(format, tasks, task)
        data = await _read_body(request, limits.max_request_bytes)
        image = await run_in_threadpool(
            decode_image,
            data,
            max_image_pixels=limits.max_image_pixels,
            min_image_side=limits.min_image_side,
            intensity=intensity,
        )
        results = await _run(queue, image, tasks, limits.timeout_s)
        return await run_in_threadpool(_answer, results, tasks, image.shape[:2], format, png)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE_DIR / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
    return app


def _check_format(format: str, tasks: list[str], task: str) -> None:
    if format not in FORMATS:
        raise UploadError(422, f"format: got {format!r}, expected json or png")
    if format == "png" and (len(tasks) != 1 or tasks[0] not in PNG_TASKS):
        raise UploadError(422, f"format=png is for task=panoptic or semantic, not {task}")


def _answer(results: dict, tasks: list[str], size, format: str, png: bool) -> Response:
    """The response of a segment request (run in a worker thread: RLE and PNG encoding)."""
    if format == "png":
        return Response(result_png(results[tasks[0]]), 200, media_type="image/png")
    return JSONResponse({task: result_json(results[task], size, png) for task in tasks})


def _tasks(task: str, offered: list[str]) -> list[str]:
    if task == "all":
        return list(offered)
    if task not in offered:
        raise UploadError(422, f"task: got {task!r}, expected one of {', '.join(offered)} or all")
    return [task]


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The image's bytes: the body, or the first file field of a multipart form."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay():
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except Exception as err:  # malformed form data
        raise UploadError(422, f"cannot read the multipart form ({err})") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise UploadError(422, "the multipart form holds no file field; send the image as one")
    return await files[0].read()


def _too_large(size: int, max_bytes: int) -> UploadError:
    return UploadError(
        413,
        f"the request body is {size} bytes or more, above serve.max_request_mb = "
        f"{max_bytes / 2**20:g} MiB",
    )


async def _run(queue: BatchQueue, image, tasks: list[str], timeout_s: float) -> dict:
    try:
        future = queue.submit(image, tasks)
    except QueueFull as err:
        raise UploadError(503, f"busy: {err}; try again shortly") from None
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        future.cancel()  # dropped unrun if its batch has not started
        raise UploadError(504, f"no answer within serve.timeout_s = {timeout_s:g} s") from None


def _add_handlers(app: FastAPI, limits: ServeLimits, metrics: ServeMetrics) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        protected = path.startswith("/v1/") or path == "/metrics"
        if protected and limits.api_key:
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), limits.api_key.encode()):
                response = error(401, "missing or wrong X-API-Key header")
                metrics.record(path, response.status_code, 0.0)
                return response
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as err:  # an unexpected failure is still one JSON line
            response = error(500, f"{type(err).__name__}: {err}")
        metrics.record(path, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request, err: UploadError):
        return error(err.status, err.message)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        return error(err.status_code, err.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")
