"""The Open Inference Protocol (KServe's v2) over HTTP, with its binary tensor data extension: both sides of the wire.

``fmnist serve`` answers ``POST /v2/models/<name>[/versions/<version>]/infer`` with
:func:`decode_request` and :func:`encode_response`; ``fmnist predict --server`` sends with
:func:`encode_request` and reads with :func:`decode_response`. Nothing here serves or loads a model.

The model has one input and three outputs (:func:`model_metadata` says so to clients):

- ``images``: shape ``[N, 28, 28]`` (or ``[N, 28, 28, 1]``), ``UINT8`` pixels 0-255 or ``FP32`` in [0, 1];
- ``class_index`` (``INT64``, ``[N]``), ``class_name`` (``BYTES``, ``[N]``) and ``probabilities``
  (``FP64``, ``[N, 10]``): the values MLflow's JSON on ``/invocations`` holds, to the digit.

A tensor travels as JSON (``"data"``: its elements, row-major) or, with the extension, as raw
little-endian bytes after the JSON header: the request's ``Inference-Header-Content-Length`` header
gives the JSON's length and each binary tensor's ``parameters.binary_data_size`` its bytes. Outputs
come back as JSON unless the request asks for them as binary (``"binary_data": true`` on a requested
output, or ``"binary_data_output": true`` in the request's parameters). A body that disagrees with
what it declares raises :class:`ProtocolError`, which the server answers as a 400 naming what was expected.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipeline.core.errors import InputError

HEADER = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"
JSON = "application/json"
INPUT = "images"
OUTPUTS = ("class_index", "class_name", "probabilities")
IMAGE_TYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}  # what the input may be
OUTPUT_TYPES = {"class_index": ("INT64", np.dtype("<i8")), "probabilities": ("FP64", np.dtype("<f8"))}
NUMERIC = IMAGE_TYPES | dict(OUTPUT_TYPES.values())  # every numeric datatype either side reads


class ProtocolError(InputError):
    """A request (or an answer) that breaks the protocol or disagrees with what it declares; the message says what was expected."""


@dataclass(frozen=True)
class Request:
    """A decoded inference request: the images as sent, and what the client wants back."""

    images: np.ndarray  # (N, 28, 28) or (N, 28, 28, 1), uint8 or float32, for the model to check
    id: str | None = None
    outputs: tuple[str, ...] = OUTPUTS
    binary: frozenset[str] = field(default_factory=frozenset)  # the outputs to send as binary


def model_metadata(name: str, version: str, platform: str = "mlflow_pyfunc") -> dict:
    """``GET /v2/models/<name>``: the model's name, version and tensors."""
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, 28, 28]}],
        "outputs": [
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 10]},
        ],
    }


def _split(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header of a body and the bytes after it."""
    if header_length is None:
        end = len(body)
    else:
        try:
            end = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER} must be the JSON header's length in bytes, got {header_length!r}") from None
        if not 0 < end <= len(body):
            raise ProtocolError(f"{HEADER} is {end}, but the body holds {len(body)} bytes (truncated?)")
    try:
        doc = orjson.loads(body[:end])
    except orjson.JSONDecodeError as exc:
        where = f"the first {end} bytes (the {HEADER} header)" if header_length is not None else "the body"
        raise ProtocolError(f"{where} must be a JSON inference request ({exc})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"an inference request is a JSON object, got {type(doc).__name__}")
    return doc, memoryview(body)[end:]


def _shape(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"{what}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _binary_size(tensor: dict, what: str) -> int | None:
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ProtocolError(f"{what}: binary_data_size must be a byte count, got {size!r}")
    return size


def decode_request(body: bytes, header_length: str | None = None) -> Request:
    """The images and the wanted outputs of a request body (``header_length``: its ``Inference-Header-Content-Length``).

    Raises:
        ProtocolError: the body breaks the protocol, or its bytes disagree with the shape and type it declares.
    """
    doc, rest = _split(body, header_length)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f'"inputs" must hold one tensor, named "{INPUT}"; got {_preview(inputs)}')
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise ProtocolError(f'the input must be named "{INPUT}", got {tensor.get("name")!r}')
    datatype = tensor.get("datatype")
    if datatype not in IMAGE_TYPES:
        raise ProtocolError(f"{INPUT}: datatype must be UINT8 (pixels 0-255) or FP32 (0-1), got {datatype!r}")
    shape = _shape(tensor.get("shape"), INPUT)
    if len(shape) not in (3, 4) or shape[1:3] != (28, 28) or shape[3:] not in ((), (1,)):
        raise ProtocolError(f"{INPUT}: shape must be [N, 28, 28] or [N, 28, 28, 1], got {list(shape)}")
    dtype, count = IMAGE_TYPES[datatype], math.prod(shape)
    size = _binary_size(tensor, INPUT)
    if size is None:
        if len(rest):
            raise ProtocolError(f"{len(rest)} bytes follow the JSON header, but {INPUT} declares no binary_data_size")
        if "data" not in tensor:
            raise ProtocolError(f'{INPUT}: no "data" and no binary_data_size; send its elements or its bytes')
        try:
            images = np.asarray(tensor["data"], dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(f"{INPUT}: data must be {datatype} numbers ({exc})") from None
        if images.size != count:
            raise ProtocolError(f"{INPUT}: data holds {images.size} elements, shape {list(shape)} needs {count}")
        images = images.reshape(shape)
    else:
        expected = count * dtype.itemsize
        if size != expected:
            raise ProtocolError(
                f"{INPUT}: binary_data_size is {size} bytes, but shape {list(shape)} of {datatype} is {expected} bytes"
            )
        if len(rest) != size:
            raise ProtocolError(
                f"{INPUT}: {len(rest)} bytes follow the JSON header, expected {size} "
                f"({'truncated' if len(rest) < size else 'too long'})"
            )
        images = np.frombuffer(rest, dtype=dtype).reshape(shape)
    return Request(images, doc.get("id"), *_wanted(doc))


def _wanted(doc: dict) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs a request asks for (all of them if it names none) and those it wants as binary."""
    everything_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    asked = doc.get("outputs")
    if asked is None:
        return OUTPUTS, frozenset(OUTPUTS if everything_binary else ())
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError(f'"outputs" must be a list of objects with a "name", got {_preview(asked)}')
    names = tuple(o.get("name") for o in asked)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise ProtocolError(f"unknown output(s) {unknown}; this model has {', '.join(OUTPUTS)}")
    binary = {o["name"] for o in asked if (o.get("parameters") or {}).get("binary_data", everything_binary)}
    return names, frozenset(binary)


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bytes_elements(names: list[str]) -> bytes:
    """BYTES elements in binary: each a 4-byte little-endian length, then the UTF-8 bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (n.encode() for n in names))


def encode_response(
    model: str, version: str, request: Request, class_index: np.ndarray, class_name: list[str], probabilities: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The answer to ``request``: its body and the headers that describe it (content type, and the JSON's length if any
    output is binary)."""
    values = {
        "class_index": np.asarray(class_index, "<i8"),
        "class_name": class_name,
        "probabilities": np.asarray(probabilities, "<f8"),
    }
    n = len(class_name)
    shapes = {"class_index": [n], "class_name": [n], "probabilities": [n, 10]}
    outputs, blobs = [], []
    for name in request.outputs:
        datatype = OUTPUT_TYPES[name][0] if name in OUTPUT_TYPES else "BYTES"
        out: dict = {"name": name, "datatype": datatype, "shape": shapes[name]}
        value = values[name]
        if name in request.binary:
            blob = _bytes_elements(value) if datatype == "BYTES" else value.tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = value if datatype == "BYTES" else value.reshape(-1)
        outputs.append(out)
    doc = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": JSON}
    return head + b"".join(blobs), {"content-type": BINARY, HEADER.lower(): str(len(head))}


def encode_request(images: np.ndarray, binary_outputs: bool = True, id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A request for ``images`` (N, 28, 28) uint8 or float32, its tensor in binary; the answer's outputs binary too unless
    ``binary_outputs`` is False."""
    datatype = {np.dtype("uint8"): "UINT8", np.dtype("float32"): "FP32"}.get(images.dtype)
    if datatype is None:
        raise ProtocolError(f"images must be uint8 (0-255) or float32 (0-1) to send, got {images.dtype}")
    blob = np.ascontiguousarray(images, IMAGE_TYPES[datatype]).tobytes()
    tensor = {"name": INPUT, "shape": list(images.shape), "datatype": datatype, "parameters": {"binary_data_size": len(blob)}}
    doc: dict = {"inputs": [tensor], "outputs": [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in OUTPUTS]}
    if id is not None:
        doc["id"] = id
    head = orjson.dumps(doc)
    return head + blob, {"content-type": BINARY, HEADER: str(len(head))}


def decode_response(body: bytes, header_length: str | None = None) -> dict:
    """An answer as ``{"model_name", "model_version", "id", "outputs": {name: array or list of str}}``.

    Raises:
        ProtocolError: the body is not an inference response, or its bytes disagree with what it declares.
    """
    doc, rest = _split(body, header_length)
    if "error" in doc:
        raise ProtocolError(f"the server refused the request: {doc['error']}")
    outputs, offset = {}, 0
    for out in doc.get("outputs") or []:
        name, datatype = out.get("name"), out.get("datatype")
        shape, size = _shape(out.get("shape"), name), _binary_size(out, name)
        if size is None:
            value = out.get("data")
        else:
            blob = bytes(rest[offset : offset + size])
            if len(blob) != size:
                raise ProtocolError(f"{name}: expected {size} bytes after the JSON header, got {len(blob)} (truncated?)")
            offset += size
            value = _strings(blob) if datatype == "BYTES" else np.frombuffer(blob, NUMERIC[datatype])
        outputs[name] = list(value) if datatype == "BYTES" else np.asarray(value, NUMERIC[datatype]).reshape(shape)
    if offset != len(rest):
        raise ProtocolError(f"{len(rest) - offset} bytes after the answer's outputs that no output declares")
    return {
        "model_name": doc.get("model_name"),
        "model_version": doc.get("model_version"),
        "id": doc.get("id"),
        "outputs": outputs,
    }


def _strings(blob: bytes) -> list[str]:
    out, i = [], 0
    while i < len(blob):
        (n,) = struct.unpack_from("<I", blob, i)
        out.append(blob[i + 4 : i + 4 + n].decode())
        i += 4 + n
    return out


def infer(url: str, model: str, images: np.ndarray, batch_size: int = 1000, progress=None, timeout: float = 300) -> dict:
    """Classify ``images`` with the server at ``url`` (``http://host:port``), ``batch_size`` a request over one kept-alive
    connection, the tensors in binary both ways; ``progress(n)`` is told of each batch's ``n`` images.

    Returns:
        ``{"class_index": (N,), "class_name": [N], "probabilities": (N, 10), "model_version": [one per image]}``.

    Raises:
        ProtocolError: the server cannot be reached, or refused a batch (with its reason).
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(f"--server must be a server's address like http://127.0.0.1:5001, got {url!r}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=timeout)
    path = f"{parts.path.rstrip('/')}/v2/models/{model}/infer"
    answers = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            body, headers = encode_request(batch)
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except OSError as exc:
                raise ProtocolError(f"{url}: the server does not answer ({exc}); is `fmnist serve` running there?") from None
            if resp.status != 200:
                try:
                    why = orjson.loads(data).get("error", data[:300].decode(errors="replace"))
                except (orjson.JSONDecodeError, AttributeError):
                    why = data[:300].decode(errors="replace")
                raise ProtocolError(f"{url} answered {resp.status} to images {start}..{start + len(batch) - 1}: {why}")
            answer = decode_response(data, resp.getheader(HEADER))
            answers.append((answer["model_version"], answer["outputs"]))
            if progress is not None:
                progress(len(batch))
    finally:
        conn.close()
    return {
        "class_index": np.concatenate([o["class_index"] for _, o in answers]),
        "class_name": [n for _, o in answers for n in o["class_name"]],
        "probabilities": np.concatenate([o["probabilities"] for _, o in answers]),
        "model_version": [v for v, o in answers for _ in o["class_name"]],
    }
