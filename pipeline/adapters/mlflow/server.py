"""``fmnist serve``'s HTTP server: MLflow's scoring server, with tensor JSON decoded once.

The app is MLflow's own (``mlflow.pyfunc.scoring_server.init``): its routes (``/ping``,
``/health``, ``/version``, ``/invocations``), request formats, response format and error bodies.
One route is put in front of MLflow's ``/invocations``: a JSON body that is tensor input
(``{"inputs": [...]}`` or ``{"instances": [...]}`` holding an array, the way clients send
images) is decoded once with orjson into a numpy array and given to the same model. MLflow
decodes such a body twice and deep-copies the nested lists before it makes an array of them,
about 1 s for 1,000 images on 2 cores. Every other request (CSV, ``dataframe_split``, anything
malformed) goes to MLflow's handler unchanged, so its answers and errors are MLflow's.
"""

from __future__ import annotations

import asyncio
import sys
from io import StringIO

import numpy as np
import orjson

TENSOR_KEYS = ({"inputs"}, {"instances"})

# The server process loads the model before it imports anything of this project: MLflow then puts
# the version's own code (logged with it, ``code_paths``) first on sys.path, so the model and this
# server run the code the version was evaluated with, as ``mlflow models serve`` does. A version
# logged before this module existed is served by MLflow's app alone.
_LAUNCH = """
import sys
import uvicorn
from mlflow.pyfunc import load_model
model = load_model(sys.argv[1])
try:
    from pipeline.adapters.mlflow.server import build_app
except ImportError:
    from mlflow.pyfunc.scoring_server import init as build_app
source = sys.modules[build_app.__module__].__file__
print(f"serving {sys.argv[1]} with {build_app.__module__}.build_app on http://{sys.argv[2]}:{sys.argv[3]}/ ({source})", flush=True)
uvicorn.run(build_app(model), host=sys.argv[2], port=int(sys.argv[3]), access_log=False)
"""


def command(model_uri: str, host: str, port: int) -> list[str]:
    """The server process for ``model_uri`` on ``host:port``: a fresh interpreter that loads the model first."""
    return [sys.executable, "-c", _LAUNCH, model_uri, host, str(port)]


def tensor_input(body: bytes, content_type: str | None) -> np.ndarray | None:
    """The array of a tensor-JSON body, or None when MLflow's handler should take the request as it is."""
    if (content_type or "").split(";")[0].strip() != "application/json":
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


def build_app(model):
    """MLflow's scoring app for a loaded pyfunc ``model``, with the tensor-JSON route in front of its ``/invocations``."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server
    from starlette.responses import Response
    from starlette.routing import Route

    app = scoring_server.init(model)

    def answer(body: bytes, content_type: str | None) -> Response:
        x = tensor_input(body, content_type)
        if x is None:
            result = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
            return Response(content=result.response, status_code=result.status, media_type=result.mimetype)
        out = StringIO()
        scoring_server.predictions_to_json(model.predict(x), out)
        return Response(content=out.getvalue(), status_code=200, media_type="application/json")

    async def invocations(request) -> Response:  # a plain Starlette endpoint: it reads the body itself
        body = await request.body()
        try:
            return await asyncio.to_thread(answer, body, request.headers.get("content-type"))
        except MlflowException as exc:  # as MLflow's route answers: the exception's JSON and HTTP status
            return Response(
                content=exc.serialize_as_json(), status_code=exc.get_http_status_code(), media_type="application/json"
            )

    app.router.routes.insert(0, Route("/invocations", invocations, methods=["POST"]))
    return app
