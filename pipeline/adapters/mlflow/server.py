"""``fmnist serve``'s HTTP server: MLflow's scoring protocol for the version a :class:`~pipeline.adapters.mlflow.follow.Holder` holds.

Routes: MLflow's ``/ping``, ``/health``, ``/version`` and ``/invocations`` (its request formats,
response format and error bodies), plus ``GET /model`` (name, version, alias, run id, when it was
loaded) and ``GET /metrics`` (Prometheus). Every answer of ``/invocations`` names the version that
gave it in ``X-Model-Version``.

A JSON body that is tensor input (``{"inputs": [...]}`` or ``{"instances": [...]}`` holding an
array, the way clients send images) is decoded once with orjson into a numpy array and given to
the model. MLflow decodes such a body twice and deep-copies the nested lists before it makes an
array of them, about 1 s for 1,000 images on 2 cores. Every other request (CSV,
``dataframe_split``, anything malformed) goes to MLflow's own handler, so its answers and errors
are MLflow's.

``python -m pipeline.adapters.mlflow.server NAME (--alias A | --version N) ...`` is the server
process that :func:`command` builds: it follows the alias (:class:`~pipeline.adapters.mlflow.follow.Follower`)
unless a version is pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from io import StringIO
from pathlib import Path

import numpy as np
import orjson

TENSOR_KEYS = ({"inputs"}, {"instances"})
log = logging.getLogger(__name__)


def command(
    name: str, version: str | None, alias: str, host: str, port: int, poll_s: float, class_names: tuple[str, ...],
    log_dir: Path | None = None, sample_rate: float = 0.0,
) -> list[str]:  # fmt: skip
    """The server process of ``name``: ``version`` pinned, or following ``alias`` (checked every ``poll_s`` seconds), with
    its prediction log in ``log_dir`` (none if None) keeping ``sample_rate`` of the images."""
    which = ["--version", version] if version else ["--alias", alias]
    logging_to = ["--log-dir", str(log_dir), "--sample-rate", str(sample_rate)] if log_dir else []
    return [sys.executable, "-m", "pipeline.adapters.mlflow.server", name, *which, "--host", host, "--port", str(port),
            "--poll-s", str(poll_s), "--class-names", json.dumps(list(class_names)), *logging_to]  # fmt: skip


def tensor_input(body: bytes, content_type: str | None) -> np.ndarray | None:
    """The array of a tensor-JSON body, or None when MLflow's handler should take the request as it is."""
    if _mime(content_type) != "application/json":
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # MLflow's handler words the error
    if not isinstance(doc, dict) or set(doc) not in TENSOR_KEYS:
        return None
    value = next(iter(doc.values()))
    if not isinstance(value, list) or not value or isinstance(value[0], dict):
        return None  # empty, a scalar or records: MLflow's own rules and messages
    try:
        return np.asarray(value)
    except ValueError:
        return None  # ragged: MLflow's handler says so


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip()


def input_format(content_type: str | None, tensor: bool) -> str:
    """The request format, as the metrics label it: ``tensor``, ``json`` (MLflow's other JSON layouts), ``csv`` or ``other``."""
    if tensor:
        return "tensor"
    return {"application/json": "json", "text/csv": "csv"}.get(_mime(content_type), "other")


class _Seen:
    """The served model as MLflow's handler calls it, keeping the input it parsed and the answer."""

    def __init__(self, model):
        self.model, self.metadata, self.answer = model, model.metadata, None

    def predict(self, data, params=None):
        out = self.model.predict(data, params=params)
        self.answer = (data, out)
        return out


def build_app(holder, metrics=None, log=None):
    """The server's Starlette app on ``holder`` (its ``current`` version answers), recording into ``metrics`` and the
    prediction log ``log`` if given."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server
    from mlflow.version import VERSION
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def answer(served, body: bytes, content_type: str | None) -> tuple[Response, str, object]:
        """The response, the request's format and, for a 200, the predictions (a DataFrame)."""
        x = tensor_input(body, content_type)
        fmt = input_format(content_type, x is not None)
        try:
            if x is None:
                seen = _Seen(served.model)
                result = scoring_server.invocations(body, content_type or "", seen, seen.metadata.get_input_schema())
                response = Response(content=result.response, status_code=result.status, media_type=result.mimetype)
                if result.status == 200 and seen.answer is not None and log is not None:
                    log.record(served.version, *seen.answer)
                return response, fmt, seen.answer[1] if result.status == 200 and seen.answer is not None else None
            predictions = served.model.predict(x)
        except MlflowException as exc:  # as MLflow's route answers: the exception's JSON and HTTP status
            response = Response(
                content=exc.serialize_as_json(), status_code=exc.get_http_status_code(), media_type="application/json"
            )
            return response, fmt, None
        if log is not None:
            log.record(served.version, x, predictions)
        out = StringIO()
        scoring_server.predictions_to_json(predictions, out)
        return Response(content=out.getvalue(), status_code=200, media_type="application/json"), fmt, predictions

    async def invocations(request) -> Response:  # a plain Starlette endpoint: it reads the body itself
        start, served = time.perf_counter(), holder.current  # this request finishes on this version, whatever swaps
        body, content_type = await request.body(), request.headers.get("content-type")
        response, fmt, predictions = await asyncio.to_thread(answer, served, body, content_type)
        response.headers["X-Model-Version"] = served.version
        if metrics is not None:
            metrics.requests.labels(str(response.status_code), fmt).inc()
            metrics.latency.labels(fmt).observe(time.perf_counter() - start)
            if predictions is not None:
                top = [max(p) for p in predictions["probabilities"]]
                metrics.answered(served.version, list(predictions["class_name"]), top)
        return response

    async def ping(request) -> Response:
        return Response(content="\n", status_code=200, media_type="application/json")

    async def version(request) -> Response:
        return Response(content=VERSION, status_code=200, media_type="application/json")

    async def model(request) -> Response:
        return JSONResponse(holder.current.describe(), headers={"X-Model-Version": holder.current.version})

    async def metrics_page(request) -> Response:
        from pipeline.adapters.prometheus import CONTENT_TYPE

        return Response(content=metrics.text() if metrics else b"", media_type=CONTENT_TYPE)

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/model", model, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.adapters.mlflow.server")
    p.add_argument("name")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--alias")
    which.add_argument("--version")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--poll-s", type=float, default=10.0)
    p.add_argument("--class-names", required=True, help="JSON list: what a loaded version must answer with")
    p.add_argument("--log-dir", help="the prediction log's folder (default: no log)")
    p.add_argument("--sample-rate", type=float, default=0.0, help="the share of served images the log keeps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Load the pinned version, or the one the alias points to, then serve it (and follow the alias)."""
    import uvicorn

    from pipeline.adapters.mlflow import follow
    from pipeline.adapters.prometheus import ServerMetrics

    args = _parse(argv)
    names = tuple(json.loads(args.class_names))
    version = args.version or follow.resolve(args.name, args.alias)
    holder, metrics = follow.Holder(follow.load(args.name, version, args.alias, names)), ServerMetrics()
    metrics.serving(holder.current.describe())
    what = (
        f"version {version} (pinned)" if args.version else f"@{args.alias} (version {version}), checked every {args.poll_s:g} s"
    )
    print(f"serving {args.name} {what} on http://{args.host}:{args.port}/", flush=True)
    if args.alias:

        def on(event: str, *details) -> None:
            if event == "swap":
                metrics.swaps.inc()
                metrics.serving(holder.current.describe())
            elif event == "failed":
                metrics.failed_loads.inc()
            elif event == "registry":
                metrics.registry_up.set(1 if details[0] else 0)

        follow.Follower(holder, args.alias, args.poll_s, names, on).start()
    log = None
    if args.log_dir:
        from pipeline.adapters.prediction_log import PredictionLog

        log = PredictionLog(Path(args.log_dir), args.sample_rate, on_drop=metrics.log_dropped.inc)
        print(f"logging predictions to {args.log_dir} (images at a rate of {args.sample_rate:g})", flush=True)
    try:
        uvicorn.run(build_app(holder, metrics, log), host=args.host, port=args.port, access_log=False, log_level="warning")
    finally:
        if log is not None:
            log.close()


if __name__ == "__main__":
    from pipeline.adapters.process import run_entry

    run_entry(main, tensorflow=True)
