"""The `serve` action: open the model once, build the app and run it on uvicorn.

Safe by default: binds 127.0.0.1; binding another address needs an API key (serve.api_key or
the ONESEG_API_KEY variable). On SIGTERM uvicorn stops accepting, answers what is in flight,
the queue finishes its batches, and the command exits 143 as every action does.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from oneseg import __version__
from oneseg.errors import BadInput
from oneseg.serve.app import ServeLimits, create_app
from oneseg.serve.batching import BatchQueue

API_KEY_ENV = "ONESEG_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_of(spec) -> str:
    """serve.api_key, else the ONESEG_API_KEY variable; refused empty beyond loopback."""
    key = spec.serve.api_key or os.environ.get(API_KEY_ENV, "")
    if not key and not is_loopback(spec.serve.host):
        raise BadInput(
            f"serve.host: {spec.serve.host} is reachable from other machines; set serve.api_key "
            f"or {API_KEY_ENV} (clients send it as X-API-Key)"
        )
    return key


def model_info(opened, predictor, spec) -> dict:
    """What GET /v1/model answers."""
    label_map = opened.label_map
    return {
        "version": __version__,
        "source": os.path.basename(opened.source),
        "kind": "pytorch" if opened.model is not None else "exported",
        "tasks": list(opened.tasks),
        "classes": [
            {"index": i, "category_id": c, "name": n, "isthing": bool(t), "color": list(rgb)}
            for i, (c, n, t, rgb) in enumerate(
                zip(label_map.category_ids, label_map.names, label_map.isthing, label_map.colors)
            )
        ],
        "input": {
            "min_size": predictor.min_size,
            "max_size": predictor.max_size,
            "size_divisibility": opened.size_divisibility,
            "fixed_size": list(opened.input_size) if opened.input_size else None,
            "rule": "shortest edge resized to min_size, longest at most max_size, padded to a "
            "multiple of size_divisibility; results at the original size",
        },
        "intensity": predictor.intensity.to_dict(),
        "limits": {
            "max_request_mb": spec.serve.max_request_mb,
            "max_image_pixels": spec.dataset.max_image_pixels,
            "min_image_side": spec.serve.min_image_side,
            "max_batch": spec.serve.max_batch,
            "timeout_s": spec.serve.timeout_s,
        },
    }


def build_app(spec):
    """The app of a spec (the model opened once), and its model info."""
    from oneseg.predictor import Predictor
    from oneseg.runner import open_model

    cfg = spec.serve
    if not cfg.model:
        raise BadInput("serve.model is empty: name a checkpoint, an ONNX file or an engine")
    api_key = api_key_of(spec)
    opened = open_model(cfg.model, cfg.tasks, spec_model=spec.model, key="serve.model")
    if opened.dropped:
        print(f"serve: {opened.dropped_message('not offering')}")
    augmentation = spec.dataset.augmentation
    predictor = Predictor.from_opened(
        opened,
        min_size=augmentation.eval_min_size,
        max_size=augmentation.eval_max_size,
        cpu_threads=spec.cpu_threads,
    )
    queue = BatchQueue(predictor.predict, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue)
    limits = ServeLimits(
        max_request_bytes=int(cfg.max_request_mb * 2**20),
        max_image_pixels=spec.dataset.max_image_pixels,
        min_image_side=cfg.min_image_side,
        timeout_s=cfg.timeout_s,
        api_key=api_key,
    )
    info = model_info(opened, predictor, spec)
    return create_app(info, queue, limits, predictor.intensity), info


def run_serve(spec, run) -> None:
    import uvicorn

    app, info = build_app(spec)
    cfg = spec.serve
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
        sock.listen(2048)  # from now on a client waits in the backlog until uvicorn accepts
    except OSError as err:
        raise BadInput(f"serve.port: cannot bind {cfg.host}:{cfg.port} ({err.strerror})") from None
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    run.log("RUNNING", f"serving {cfg.model} at {url}", url=url, tasks=info["tasks"])
    print(f"serve: {cfg.model} ({', '.join(info['tasks'])}) at {url}", flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=max(5.0, cfg.timeout_s),
        limit_concurrency=cfg.max_queue * 4,
    )
    uvicorn.Server(config).run(sockets=[sock])
    run.kpis["url"] = url
