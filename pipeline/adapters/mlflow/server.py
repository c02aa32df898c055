"""``fmnist serve``'s HTTP server: MLflow's scoring protocol and the Open Inference Protocol for the version a :class:`~pipeline.adapters.mlflow.follow.Holder` holds.

Routes:

- MLflow's ``/ping``, ``/health``, ``/version`` and ``/invocations`` (its request formats, response
  format and error bodies);
- the Open Inference Protocol's (KServe v2, :mod:`pipeline.adapters.open_inference`):
  ``POST /v2/models/<name>[/versions/<version>]/infer``, with raw uint8 pixels after a JSON header
  (its binary tensor data extension) or its JSON, and ``/v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/<name>[/versions/<version>]`` and ``.../ready``;
- ``GET /model`` (name, version, alias, run id, when it was loaded) and ``GET /metrics`` (Prometheus).

Every answer of a model names the version that gave it in ``X-Model-Version``.

A JSON body that is tensor input (``{"inputs": [...]}`` or ``{"instances": [...]}`` holding an
array, the way clients send images) is decoded once with orjson into a numpy array and given to
the model. MLflow decodes such a body twice and deep-copies the nested lists before it makes an
array of them, about 1 s for 1,000 images on 2 cores. Every other request to ``/invocations`` (CSV,
``dataframe_split``, anything malformed) is parsed by MLflow's own handler, so its errors are
MLflow's. Every answer is encoded once, with orjson: MLflow's handler gets an empty answer to encode,
and what it writes is dropped.

``python -m pipeline.adapters.mlflow.server NAME (--alias A | --version N) ...`` is the server
process that :func:`command` builds: it follows the alias (:class:`~pipeline.adapters.mlflow.follow.Follower`)
unless a version is pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np
import orjson

TENSOR_KEYS = ({"inputs"}, {"instances"})
log = logging.getLogger(__name__)


def command(
    name: str, version: str | None, alias: str, host: str, port: int, poll_s: float, class_names: tuple[str, ...],
    log_to: Path | str | None = None, sample_rate: float = 0.0,
) -> list[str]:  # fmt: skip
    """The server process of ``name``: ``version`` pinned, or following ``alias`` (checked every ``poll_s`` seconds), with
    its prediction log in ``log_to`` (a folder or a PostgreSQL URL; none if None) keeping ``sample_rate`` of the images."""
    which = ["--version", version] if version else ["--alias", alias]
    logging_to = ["--log-to", str(log_to), "--sample-rate", str(sample_rate)] if log_to else []
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
    """The format of a request to ``/invocations``, as the metrics label it: ``tensor``, ``json`` (MLflow's other JSON
    layouts), ``csv`` or ``other`` (the v2 route's are ``v2-binary`` and ``v2-json``)."""
    if tensor:
        return "tensor"
    return {"application/json": "json", "text/csv": "csv"}.get(_mime(content_type), "other")


def predictions_json(columns: dict) -> bytes:
    """MLflow's answer, ``{"predictions": [<one object per image>]}``, for the columns of an answer
    (:meth:`~pipeline.adapters.mlflow.serving.FashionClassifier.classify`), encoded with orjson."""
    values = {k: v.tolist() if isinstance(v, np.ndarray) else list(v) for k, v in columns.items()}
    return orjson.dumps({"predictions": [dict(zip(values, row)) for row in zip(*values.values())]})


def frame_columns(frame) -> dict:
    """The columns of an answer from the DataFrame the pyfunc model's ``predict`` returns."""
    return {
        "class_index": frame["class_index"].to_numpy(np.int64),
        "class_name": frame["class_name"].tolist(),
        "probabilities": np.array(frame["probabilities"].tolist(), np.float64),
    }


class _Seen:
    """The served model as MLflow's handler calls it: it keeps the input the handler parsed and the answer, and gives the
    handler an empty answer to encode (the server encodes the real one once)."""

    def __init__(self, model):
        self.model, self.metadata, self.answer = model, model.metadata, None

    def predict(self, data, params=None):
        self.answer = (data, frame_columns(self.model.predict(data, params=params)))
        return []


def build_app(holder, metrics=None, log=None):
    """The server's Starlette app on ``holder`` (its ``current`` version answers), recording into ``metrics`` and the
    prediction log ``log`` if given."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server
    from mlflow.version import VERSION
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from pipeline.adapters import open_inference

    def done(served, model_input, columns: dict) -> None:
        """Record an answered request in the prediction log and the metrics (on the request's worker thread)."""
        if log is not None:
            log.record(served.version, model_input, columns)
        if metrics is not None:
            metrics.answered(served.version, columns["class_name"], columns["probabilities"].max(axis=1).tolist())

    def answer(served, body: bytes, content_type: str | None) -> tuple[Response, str]:
        """The response to a request of ``/invocations``, and the request's format."""
        x = tensor_input(body, content_type)
        fmt = input_format(content_type, x is not None)
        try:
            if x is None:
                seen = _Seen(served.model)
                result = scoring_server.invocations(body, content_type or "", seen, seen.metadata.get_input_schema())
                if result.status != 200 or seen.answer is None:
                    return Response(content=result.response, status_code=result.status, media_type=result.mimetype), fmt
                x, columns = seen.answer
            else:
                columns = served.classifier.classify(x)
        except MlflowException as exc:  # as MLflow's route answers: the exception's JSON and HTTP status
            response = Response(
                content=exc.serialize_as_json(), status_code=exc.get_http_status_code(), media_type="application/json"
            )
            return response, fmt
        done(served, x, columns)
        return Response(content=predictions_json(columns), status_code=200, media_type="application/json"), fmt

    def answer_v2(served, body: bytes, header_length: str | None) -> tuple[Response, str]:
        """The Open Inference Protocol's :func:`answer`."""
        fmt = "v2-json" if header_length is None else "v2-binary"
        try:
            request = open_inference.decode_request(body, header_length)
            columns = served.classifier.classify(request.images)
        except (open_inference.ProtocolError, MlflowException) as exc:
            message = exc.message if isinstance(exc, MlflowException) else str(exc)
            return JSONResponse({"error": message}, status_code=400), fmt
        done(served, request.images, columns)
        content, headers = open_inference.encode_response(served.name, served.version, request, **columns)
        return Response(content=content, status_code=200, headers=headers), fmt

    async def answered(served, start: float, work, *args) -> Response:
        """Run ``work(served, *args)`` off the event loop, name the version, and count the request."""
        response, fmt = await asyncio.to_thread(work, served, *args)
        response.headers["X-Model-Version"] = served.version
        if metrics is not None:
            metrics.requests.labels(str(response.status_code), fmt).inc()
            metrics.latency.labels(fmt).observe(time.perf_counter() - start)
        return response

    async def invocations(request) -> Response:  # a plain Starlette endpoint: it reads the body itself
        start, served = time.perf_counter(), holder.current  # this request finishes on this version, whatever swaps
        body, content_type = await request.body(), request.headers.get("content-type")
        return await answered(served, start, answer, body, content_type)

    def unknown(served, request) -> Response | None:
        """A 404 when the path names another model or version than the one served."""
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != served.name:
            return JSONResponse({"error": f"no model {name!r} here; this server serves {served.name!r}"}, status_code=404)
        if version is not None and version != served.version:
            why = f"version {version} of {name} is not served; version {served.version} is"
            return JSONResponse({"error": why}, status_code=404, headers={"X-Model-Version": served.version})
        return None

    async def infer(request) -> Response:
        start, served = time.perf_counter(), holder.current
        if (refused := unknown(served, request)) is not None:
            return refused
        body = await request.body()
        return await answered(served, start, answer_v2, body, request.headers.get(open_inference.HEADER))

    async def model_v2(request) -> Response:
        served = holder.current
        refused = unknown(served, request)
        return refused or JSONResponse(open_inference.model_metadata(served.name, served.version))

    async def ready_v2(request) -> Response:
        return unknown(holder.current, request) or Response(status_code=200)

    async def server_v2(request) -> Response:
        project = installed_version("fashion-mnist-pipeline")
        return JSONResponse({"name": "fmnist serve", "version": project, "extensions": ["binary_tensor_data"]})

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
        Route("/v2", server_v2, methods=["GET"]),
        Route("/v2/health/live", ping, methods=["GET"]),
        Route("/v2/health/ready", ping, methods=["GET"]),  # a server answers only once its first version loaded
        Route("/v2/models/{name}", model_v2, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_v2, methods=["GET"]),
        Route("/v2/models/{name}/ready", ready_v2, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", ready_v2, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
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
    p.add_argument("--log-to", help="the prediction log's folder or PostgreSQL URL (default: no log)")
    p.add_argument("--sample-rate", type=float, default=0.0, help="the share of served images the log keeps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Load the pinned version, or the one the alias points to, then serve it (and follow the alias)."""
    import uvicorn

    from pipeline.adapters import alerts
    from pipeline.adapters.mlflow import follow
    from pipeline.adapters.prometheus import ServerMetrics, announce

    args = _parse(argv)
    alert = alerts.destination()  # a malformed destination is refused before the model loads
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
                version, why = details
                alert.send(
                    f"{args.name}: version {version} refused by fmnist serve",
                    f"@{args.alias} points to version {version}, which failed to load or its check: {why}. "
                    f"Still serving version {holder.current.version}.",
                    "failure",
                )
            elif event == "registry":
                metrics.registry_up.set(1 if details[0] else 0)

        follow.Follower(holder, args.alias, args.poll_s, names, on).start()
    log = None
    if args.log_to:
        from pipeline.adapters.prediction_log import PredictionLog

        log = PredictionLog(args.log_to, args.sample_rate, on_drop=metrics.log_dropped.inc)
        shown = re.sub(r"(://[^:@/]+):[^@/]*@", r"\1:***@", args.log_to)  # a URL's password stays out of the log
        print(f"logging predictions to {shown} (images at a rate of {args.sample_rate:g})", flush=True)
    target = announce(args.host, args.port, {"model": args.name})
    try:
        uvicorn.run(build_app(holder, metrics, log), host=args.host, port=args.port, access_log=False, log_level="warning")
    finally:
        if target is not None:
            target.unlink(missing_ok=True)
        if log is not None:
            log.close()


if __name__ == "__main__":
    from pipeline.adapters.process import run_entry

    run_entry(main, tensorflow=True)
