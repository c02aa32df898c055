"""The served model: the champion through ``mlflow.pyfunc`` and a real ``fmnist serve`` on 127.0.0.1.

Reads the session's shared tiny repro (``tests/tiny_repro.py``), whose champion is version 1.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tiny_repro
import yaml
from conftest import BIN, ROOT, fmnist_serve, mlflow_client, trained_figure
from mlflow.exceptions import MlflowException

from benchmarks.common import global_tracking_uri
from pipeline.adapters.files import file_sha256, load_split
from pipeline.adapters.mlflow import store
from pipeline.cli import build_parser
from pipeline.commands import serve
from pipeline.core.config import load_params
from pipeline.core.errors import InputError
from pipeline.core.images import MAX_BATCH
from pipeline.stack.processes import free_port

MODEL = "fashion-mnist-cnn"
NAMES = list(load_params(ROOT / "params.yaml").base.class_names)


@pytest.fixture(scope="module")
def repro(prepared_cache, tmp_path_factory) -> Path:
    return tiny_repro.reproduced(prepared_cache, tmp_path_factory)


@pytest.fixture(scope="module")
def test_set(repro):
    return load_split(repro / "data" / "prepared" / "test.npz")  # (10000, 28, 28) uint8, (10000,) uint8


def champion_files(repo: Path) -> Path:
    """The champion's logged model, downloaded: its MLmodel and artifacts."""
    version = mlflow_client(repo).get_model_version_by_alias(MODEL, "champion")
    with global_tracking_uri(tiny_repro.store_uri(repo)):
        return Path(mlflow.artifacts.download_artifacts(version.source))


@pytest.fixture(scope="module")
def champion(repro):
    """``models:/fashion-mnist-cnn@champion`` loaded the way a user would, with plain MLflow."""
    with global_tracking_uri(tiny_repro.store_uri(repro)):
        yield mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")


def _check_output(out, n: int) -> None:
    assert list(out.columns) == ["class_index", "class_name", "probabilities"]
    assert len(out) == n
    proba = np.array(out["probabilities"].tolist())
    assert proba.shape == (n, 10)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)  # rounded to 6 decimals
    assert (out["class_index"].to_numpy() == proba.argmax(axis=1)).all()
    assert out["class_name"].tolist() == [NAMES[i] for i in out["class_index"]]


# --- the champion in-process --------------------------------------------------------------------


@pytest.mark.slow
def test_champion_reproduces_the_reported_test_accuracy(champion, repro, test_set):
    variant = json.loads((repro / "reports" / "promotion.json").read_text())["variant"]
    reported = json.loads((repro / "reports" / "metrics" / f"{variant}.json").read_text())["test_accuracy"]
    x, y = test_set
    out = champion.predict(x)
    _check_output(out, len(y))
    assert np.mean(out["class_index"].to_numpy() == y) == pytest.approx(reported, abs=0.001)  # 0.1 points


@pytest.mark.slow
def test_the_served_forward_pass_is_the_evaluated_one_with_its_test_time_augmentation(champion, repro, test_set):
    import keras

    variant = json.loads((repro / "reports" / "promotion.json").read_text())["variant"]
    tta = json.loads((repro / "reports" / "metrics" / f"{variant}.json").read_text())["tta"]
    served = champion.unwrap_python_model()
    assert served.tta == tta == "flip+shift"  # what evaluate used is what the server runs
    x = test_set[0][:2500, ..., None].astype(np.float32) / 255.0  # three chunks, the last one partial
    views = [x, x[:, :, ::-1]]
    views += [np.roll(v, s, axis=2) for v in views for s in (-1, 1)]
    reference = np.mean(
        [keras.ops.convert_to_numpy(keras.ops.softmax(served.model.predict(v, batch_size=1000, verbose=0))) for v in views],
        axis=0,
    )
    compiled = served.probabilities(x)
    np.testing.assert_allclose(compiled, reference, atol=1e-5)
    agreement = np.mean(compiled.argmax(axis=1) == reference.argmax(axis=1))
    # AMD EPYC 1.0 (the figures on each CPU: docs/development.md)
    assert trained_figure("serving: compiled signature's agreement with Keras", agreement) > 0.999


@pytest.mark.slow
def test_champion_accepts_uint8_channel_last_float_and_integer_images(champion, test_set):
    x = test_set[0][:16]
    reference = champion.predict(x)
    for variant in (x[..., None], x / 255.0, (x / 255.0).astype(np.float32)[..., None], x.astype(np.int64)):
        out = champion.predict(variant)
        _check_output(out, len(x))
        assert out["class_index"].tolist() == reference["class_index"].tolist()
        np.testing.assert_allclose(out["probabilities"].tolist(), reference["probabilities"].tolist(), atol=1e-5)


BAD_INPUTS = {
    "flat vectors": (np.zeros((2, 784), np.uint8), r"got shape \(2, 784\)"),
    "wrong size": (np.zeros((2, 27, 28), np.uint8), r"got shape \(2, 27, 28\)"),
    "one image without a batch": (np.zeros((28, 28, 1), np.uint8), r"got shape \(28, 28, 1\)"),
    "RGB": (np.zeros((2, 28, 28, 3), np.uint8), r"got shape \(2, 28, 28, 3\)"),
    "strings": (np.full((1, 28, 28), "a"), "got dtype <U1"),
    "booleans": (np.zeros((1, 28, 28), bool), "got dtype bool"),
    "NaN": (np.full((1, 28, 28), np.nan), "NaN or infinite"),
    "infinity": (np.full((1, 28, 28), np.inf, np.float32), "NaN or infinite"),
    "integers above 255": (np.full((1, 28, 28), 300), "must be 0-255, got 300..300"),
    "negative integers": (np.full((1, 28, 28), -1), "must be 0-255, got -1..-1"),
    "floats above 1": (np.full((1, 28, 28), 2.0), r"must be in \[0, 1\], got 2..2"),
    "empty batch": (np.zeros((0, 28, 28), np.uint8), r"got shape \(0, 28, 28\)"),
    "too large a batch": (np.zeros((MAX_BATCH + 1, 28, 28), np.uint8), f"send at most {MAX_BATCH}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_champion_rejects_bad_input_with_a_clear_message(champion, case):
    images, message = BAD_INPUTS[case]
    with pytest.raises(InputError, match=message) as raised:
        champion.predict(images)
    assert "expected images of shape" in str(raised.value) or "send at most" in str(raised.value)


@pytest.mark.slow
def test_version_tag_is_the_sha256_of_the_model_file(repro):
    version = mlflow_client(repro).get_model_version_by_alias(MODEL, "champion")
    model_file = repro / "models" / version.tags["variant"] / "model.keras"  # the DVC output of `train`
    assert version.tags["model_sha256"] == file_sha256(model_file)
    local = champion_files(repro)
    assert file_sha256(local / "artifacts" / "model.keras") == version.tags["model_sha256"]  # what is served


@pytest.mark.slow  # its project copy trains
def test_the_served_model_is_code_not_a_pickle_and_a_version_pickled_by_the_old_code_still_loads(
    repro, test_set, tmp_path, monkeypatch
):
    from pipeline.adapters.mlflow.serving import PACKAGE_DIR, FashionClassifier

    local = champion_files(repro)
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("model_code.py") and "python_model" not in flavor
    assert not list(local.rglob("*.pkl"))
    x = test_set[0][:32]
    old = tmp_path / "pickled"  # what the code before models-from-code logged: a pickled FashionClassifier
    artifacts = {"keras_model": str(local / "artifacts" / "model.keras"), "meta": str(local / "artifacts" / "serving.json")}
    mlflow.pyfunc.save_model(old, python_model=FashionClassifier(), artifacts=artifacts, code_paths=[str(PACKAGE_DIR)])
    pickled = mlflow.pyfunc.load_model(str(old)).predict(x)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow refuses any pickle from here on
    served = mlflow.pyfunc.load_model(str(local)).predict(x)
    assert served["class_index"].tolist() == pickled["class_index"].tolist()
    assert np.allclose(np.stack(served["probabilities"]), np.stack(pickled["probabilities"]))
    with pytest.raises(MlflowException, match="pickle is disallowed"):
        mlflow.pyfunc.load_model(str(old))


# --- the server's tensor-JSON route ---------------------------------------------------------------


TENSOR_BODIES = {
    "inputs, uint8 values": (json.dumps({"inputs": [[[0] * 28] * 28]}), (1, 28, 28)),
    "instances, channel last": (json.dumps({"instances": [[[[0.5]] * 28] * 28] * 2}), (2, 28, 28, 1)),
}
MLFLOWS_BODIES = {  # left to MLflow's handler, which answers them as it always has
    "dataframe_split": json.dumps({"dataframe_split": {"columns": ["pixel1"], "data": [[0]]}}),
    "params beside the inputs": json.dumps({"inputs": [[[0] * 28] * 28], "params": {"k": 1}}),
    "empty": json.dumps({"inputs": []}),
    "ragged": json.dumps({"inputs": [[[1, 2], [3]]]}),
    "records": json.dumps({"instances": [{"a": 1}]}),
    "NaN (not strict JSON)": '{"inputs": [NaN]}',
    "not JSON": "images please",
    "a list": "[1, 2]",
}


@pytest.mark.parametrize("case", TENSOR_BODIES)
def test_tensor_json_is_decoded_once_into_an_array(case):
    from pipeline.adapters.mlflow.server import tensor_input

    body, shape = TENSOR_BODIES[case]
    x = tensor_input(body.encode(), "application/json; charset=utf-8")
    assert isinstance(x, np.ndarray) and x.shape == shape
    np.testing.assert_array_equal(x, np.asarray(json.loads(body)[next(iter(json.loads(body)))]))


@pytest.mark.parametrize("case", MLFLOWS_BODIES)
def test_every_other_body_goes_to_mlflows_handler(case):
    from pipeline.adapters.mlflow.server import tensor_input

    assert tensor_input(MLFLOWS_BODIES[case].encode(), "application/json") is None
    assert tensor_input(next(iter(TENSOR_BODIES.values()))[0].encode(), "text/csv") is None


@pytest.mark.slow
def test_every_answer_holds_what_mlflows_handler_answers_encoded_once(champion, test_set):
    from fastapi.testclient import TestClient
    from mlflow.pyfunc.scoring_server import invocations

    from pipeline.adapters.mlflow.follow import Holder, Served
    from pipeline.adapters.mlflow.server import build_app

    http = TestClient(build_app(Holder(Served(champion, MODEL, "1", "champion", "run"))))
    x = test_set[0]
    csv = _csv(PIXELS, x[:50].reshape(50, 784).tolist())
    split = json.dumps({"dataframe_split": {"columns": PIXELS, "data": x[:7].reshape(7, 784).tolist()}})
    for body, kind in (
        *(
            (json.dumps({"inputs": images.tolist()}), "application/json")
            for images in (x[:1], x[:300], (x[:3] / 255.0)[..., None])
        ),
        (csv, "text/csv"),
        (split, "application/json"),
    ):
        ours = http.post("/invocations", content=body, headers={"Content-Type": kind})
        theirs = invocations(body, kind, champion, None)
        assert (ours.status_code, ours.json()) == (theirs.status, json.loads(theirs.response))
    for body in (json.dumps({"inputs": [[[300] * 28] * 28]}), MLFLOWS_BODIES["ragged"]):  # errors: a 400 either way
        resp = http.post("/invocations", content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and json.loads(resp.text)["error_code"] in {"BAD_REQUEST", "INVALID_PARAMETER_VALUE"}


# --- a real `fmnist serve` ------------------------------------------------------------------------


def _request(
    port: int, path: str, body: bytes | None = None, timeout: float = 60, content_type: str = "application/json"
) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _invoke(port: int, images) -> tuple[int, dict]:
    status, text = _request(port, "/invocations", json.dumps({"inputs": np.asarray(images).tolist()}).encode())
    return status, json.loads(text)


@pytest.fixture(scope="module")
def server(repro, tmp_path_factory):
    """``fmnist serve`` (which execs a fresh interpreter that loads ``models:/...@champion``) on a free port.

    PATH deliberately lacks the virtual environment's bin (as with ``.venv/bin/fmnist serve``).
    """
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != BIN.resolve())
    env = tiny_repro.project_env(MLFLOW_TRACKING_URI=tiny_repro.store_uri(repro), PATH=path)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with fmnist_serve(repro, env, log) as port:
        yield port, log


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (IPv4, from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


@pytest.mark.slow
def test_server_serves_the_champion_on_localhost_only(server, repro):
    port, log = server
    served = f"serving {MODEL} @champion (version 1), checked every 10 s on http://127.0.0.1:{port}/"
    assert served in log.read_text()
    assert _listening(port) == {"127.0.0.1"}
    status, body = _request(port, "/model")
    assert status == 200 and json.loads(body) | {"loaded_at": None} == {
        "name": MODEL, "version": "1", "alias": "champion", "loaded_at": None,
        "run_id": mlflow_client(repro).get_model_version(MODEL, "1").run_id,
    }  # fmt: skip


@pytest.mark.slow
def test_server_classifies_real_test_images_with_class_names_and_probabilities(server, champion, test_set):
    port, _ = server
    x, y = test_set[0][:200], test_set[1][:200]
    status, body = _invoke(port, x)
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 200
    for p in predictions:
        assert set(p) == {"class_index", "class_name", "probabilities"}
        assert p["class_name"] == NAMES[p["class_index"]]
        assert len(p["probabilities"]) == 10 and sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert max(p["probabilities"]) == p["probabilities"][p["class_index"]]
    served = [p["class_index"] for p in predictions]
    assert served == champion.predict(x)["class_index"].tolist()  # the same model as in-process
    # AMD EPYC 0.755 (the figures on each CPU: docs/development.md)
    assert trained_figure("serving: served accuracy, 200 test images", np.mean(np.array(served) == y)) > 0.6  # chance 0.1


@pytest.mark.slow
def test_server_accepts_float_and_channel_last_images(server, test_set):
    port, _ = server
    x = test_set[0][:4]
    _, reference = _invoke(port, x)
    for images in ((x / 255.0).round(6), x[..., None]):
        status, body = _invoke(port, images)
        assert status == 200, body
        assert [p["class_index"] for p in body["predictions"]] == [p["class_index"] for p in reference["predictions"]]


def _csv(columns: list[str], rows) -> bytes:
    return (",".join(columns) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n").encode()


PIXELS = [f"pixel{i}" for i in range(1, 785)]


@pytest.mark.slow
def test_server_takes_flat_pixel_rows_as_dataframe_split_and_csv_like_the_csv_edition(server, test_set):
    port, _ = server
    x, y = test_set[0][:5], test_set[1][:5]
    _, reference = _invoke(port, x)
    expected = [p["class_index"] for p in reference["predictions"]]
    flat = x.reshape(5, 784).astype(int).tolist()
    labelled = [[int(label), *row] for label, row in zip(y, flat)]  # label first, as in fashion-mnist_test.csv
    split = {"dataframe_split": {"columns": ["label", *PIXELS], "data": labelled}}
    status, text = _request(port, "/invocations", json.dumps(split).encode())
    assert status == 200, text
    assert [p["class_index"] for p in json.loads(text)["predictions"]] == expected
    for columns, rows in ((["label", *PIXELS], labelled), (PIXELS, flat)):  # the label column is optional
        status, text = _request(port, "/invocations", _csv(columns, rows), content_type="text/csv")
        assert status == 200, text
        assert [p["class_index"] for p in json.loads(text)["predictions"]] == expected


BAD_ROWS = {
    "a pixel column missing": (PIXELS[:-1], [[0] * 783], "missing column 'pixel784'"),
    "an unknown column": (["id", *PIXELS], [[1] + [0] * 784], "unknown column 'id'"),
    "a pixel out of range": (PIXELS, [[300] + [0] * 783], "must be 0-255"),
    "a word for a pixel": (PIXELS, [["dark"] + [0] * 783], "got dtype"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_pixel_rows_get_a_400_that_says_what_was_expected(server, case):
    port, _ = server
    columns, rows, message = BAD_ROWS[case]
    for body, kind in (
        (_csv(columns, rows), "text/csv"),
        (json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode(), "application/json"),
    ):
        status, text = _request(port, "/invocations", body, content_type=kind)
        assert status == 400, text
        error = json.loads(text)
        # MLflow's server puts a preview of the parsed data before the model's message; ours is the last line
        ours = error["message"].rsplit("\nError: ", 1)[-1]
        assert message in ours and "\n" not in ours.strip() and "stack_trace" not in error, error["message"][-300:]
        assert "expected 784 columns pixel1..pixel784" in ours or "expected images of shape" in ours


BAD_REQUESTS = {
    "wrong shape": (json.dumps({"inputs": [[1, 2, 3]]}), r"got shape \(1, 3\)"),
    "strings": (json.dumps({"inputs": [[["a"] * 28] * 28]}), "got dtype"),
    "booleans": (json.dumps({"inputs": [[[True] * 28] * 28]}), "got dtype bool"),
    "NaN": ('{"inputs": [[' + ", ".join(["[" + ", ".join(["NaN"] * 28) + "]"] * 28) + "]]}", "NaN"),
    "out of range": (json.dumps({"inputs": [[[300] * 28] * 28]}), "must be 0-255"),
    "ragged": (json.dumps({"inputs": [[[1, 2], [3]]]}), "inhomogeneous shape"),  # refused by MLflow's JSON parser
    "empty": (json.dumps({"inputs": []}), ""),  # refused by MLflow's schema check, before the model sees it
    "not JSON": ("images please", "JSON"),
    "no inputs key": (json.dumps({"images": [1]}), "inputs"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_answering(server, test_set, case):
    port, _ = server
    body, message = BAD_REQUESTS[case]
    status, text = _request(port, "/invocations", body.encode())
    assert 400 <= status < 600, text
    error = json.loads(text)
    assert error["error_code"] in {"BAD_REQUEST", "INVALID_PARAMETER_VALUE"}
    assert re.search(message, error["message"]), error["message"][-500:]
    assert "stack_trace" not in error  # our own message, not a traceback of the server's internals
    assert _request(port, "/ping")[0] == 200
    assert _invoke(port, test_set[0][:1])[0] == 200


# --- the Open Inference Protocol (KServe v2) and its binary tensors --------------------------------

V2 = f"/v2/models/{MODEL}/infer"


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _answers(port: int, x: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and probabilities for ``x``, 1,000 images a request, in one of the server's input forms."""
    from pipeline.adapters import open_inference

    index, proba = [], []
    for i in range(0, len(x), 1000):
        batch = x[i : i + 1000]
        if form in ("tensor JSON", "CSV rows"):
            body, kind = (
                (json.dumps({"inputs": batch.tolist()}).encode(), "application/json")
                if form == "tensor JSON"
                else (_csv(PIXELS, batch.reshape(len(batch), 784).tolist()), "text/csv")
            )
            status, _, data = _post(port, "/invocations", body, {"Content-Type": kind})
            assert status == 200, data[:300]
            rows = json.loads(data)["predictions"]
            index.append([r["class_index"] for r in rows])
            proba.append([r["probabilities"] for r in rows])
            continue
        body, headers = open_inference.encode_request(batch, binary_outputs=form == "binary, binary answer")
        status, got, data = _post(port, V2, body, headers)
        assert status == 200, data[:300]
        assert got["x-model-version"] == "1"
        answer = open_inference.decode_response(data, got.get(open_inference.HEADER.lower()))
        assert answer["model_name"] == MODEL and answer["model_version"] == "1"
        assert answer["outputs"]["class_name"] == [NAMES[i] for i in answer["outputs"]["class_index"]]
        index.append(answer["outputs"]["class_index"])
        proba.append(answer["outputs"]["probabilities"])
    return np.concatenate(index), np.concatenate(proba)


@pytest.mark.slow
def test_1000_images_as_tensor_json_csv_rows_and_binary_get_identical_answers_and_the_test_set_the_registered_accuracy(
    server, repro, test_set
):
    port, _ = server
    x, y = test_set
    answers = {form: _answers(port, x[:1000], form) for form in ("tensor JSON", "CSV rows", "binary, binary answer")}
    index, proba = _answers(port, x, "binary")  # the whole test set: the registered accuracy
    for form, (other_index, other_proba) in answers.items():
        np.testing.assert_array_equal(other_index, index[:1000], err_msg=form)
        np.testing.assert_array_equal(other_proba, proba[:1000], err_msg=form)  # the same numbers, to the last digit
    registered = float(mlflow_client(repro).get_model_version(MODEL, "1").tags["test_accuracy"])
    assert np.mean(index == y) == pytest.approx(registered, abs=5e-5)  # the tag holds six decimals
    status, text = _request(port, "/metrics")
    assert re.search(r'fmnist_serve_requests_total\{format="v2-binary",status="200"\} ([0-9.]+)', text), text[-2000:]


def _binary(shape, datatype="UINT8", data: bytes | None = None, size: int | None = None, header: int | None = None):
    """A v2 request with a binary tensor: ``data`` after the JSON (default: zeros for ``shape``), ``size`` declared."""
    itemsize = {"UINT8": 1, "FP32": 4, "FP64": 8}[datatype]
    data = bytes(int(np.prod(shape)) * itemsize) if data is None else data
    head = json.dumps(
        {"inputs": [{"name": "images", "shape": shape, "datatype": datatype,
                     "parameters": {"binary_data_size": len(data) if size is None else size}}]}
    ).encode()  # fmt: skip
    return head + data, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header or len(head))}


BAD_BINARY = {
    "short": (_binary([2, 28, 28], data=bytes(784 * 2 - 100), size=784 * 2), r"1468 bytes follow .* expected 1568 \(truncated\)"),
    "long": (_binary([1, 28, 28], data=bytes(785), size=784), r"785 bytes follow .* expected 784 \(too long\)"),
    "size disagrees with the shape": (
        _binary([2, 28, 28], data=bytes(784)),
        r"binary_data_size is 784 bytes, but shape \[2, 28, 28\] of UINT8 is 1568",
    ),
    "wrong dtype": (_binary([1, 28, 28], "FP64"), "datatype must be UINT8 .* or FP32 .*, got 'FP64'"),
    "wrong shape": (_binary([1, 32, 32]), r"shape must be \[N, 28, 28\] or \[N, 28, 28, 1\], got \[1, 32, 32\]"),
    "floats out of range": (
        _binary([1, 28, 28], "FP32", np.full(784, 2.0, "<f4").tobytes()),
        r"float pixels must be in \[0, 1\]",
    ),
    "header length past the body": (
        _binary([1, 28, 28], header=10_000),
        "Inference-Header-Content-Length is 10000, but the body holds",
    ),
    "header length mid-JSON": (_binary([1, 28, 28], header=20), "must be a JSON inference request"),
    "not a v2 request": (
        (b'{"inputs": [[0]]}', {"Content-Type": "application/json"}),
        '"inputs" must hold one tensor, named "images"',
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_BINARY)
def test_malformed_binary_bodies_get_a_400_naming_the_problem_and_the_server_keeps_answering(server, test_set, case):
    from pipeline.adapters import open_inference

    port, _ = server
    (body, headers), message = BAD_BINARY[case]
    status, _, data = _post(port, V2, body, headers)
    assert status == 400, data[:300]
    assert re.search(message, json.loads(data)["error"]), json.loads(data)["error"]
    body, headers = open_inference.encode_request(test_set[0][:3])
    assert _post(port, V2, body, headers)[0] == 200


@pytest.mark.slow
def test_the_v2_routes_describe_the_served_version_and_refuse_another(server):
    port, _ = server
    status, text = _request(port, "/v2")
    assert status == 200 and "binary_tensor_data" in json.loads(text)["extensions"]
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1/ready"):
        assert _request(port, path)[0] == 200, path
    status, text = _request(port, f"/v2/models/{MODEL}")
    meta = json.loads(text)
    assert status == 200 and meta["versions"] == ["1"] and meta["inputs"][0]["name"] == "images"
    assert [o["name"] for o in meta["outputs"]] == ["class_index", "class_name", "probabilities"]
    body, headers = _binary([1, 28, 28])
    assert _post(port, f"/v2/models/{MODEL}/versions/1/infer", body, headers)[0] == 200
    status, _, data = _post(port, f"/v2/models/{MODEL}/versions/7/infer", body, headers)
    assert status == 404 and json.loads(data)["error"] == f"version 7 of {MODEL} is not served; version 1 is"
    status, _, data = _post(port, "/v2/models/mnist/infer", body, headers)
    assert status == 404 and json.loads(data)["error"] == f"no model 'mnist' here; this server serves '{MODEL}'"


@pytest.mark.slow
def test_fmnist_predict_on_the_server_prints_what_it_prints_in_process(server, repro, test_set, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from pipeline.cli import main as fmnist

    port, _ = server
    x = test_set[0]
    Image.fromarray(x[0]).save(tmp_path / "first.png")
    Image.fromarray(x[1]).resize((56, 56)).convert("RGB").save(tmp_path / "photo.png")
    np.savez(tmp_path / "batch.npz", x=x[2:1502])  # two batches of 1,000: uint8 on the wire
    np.savez(tmp_path / "floats.npz", x=np.clip(x[:3] / 255.0 + 1e-3, 0, 1).astype(np.float32))  # FP32 on the wire
    files = [str(tmp_path / f) for f in ("first.png", "photo.png", "batch.npz", "floats.npz")]
    monkeypatch.chdir(repro)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for form in ([], ["--json"]):
        fmnist(["predict", *files, *form])
        local = capsys.readouterr().out
        fmnist(["predict", *files, *form, "--server", f"http://127.0.0.1:{port}"])
        assert capsys.readouterr().out == local
    assert len(local.splitlines()) > 1505 and '"version": "1"' in local
    with pytest.raises(SystemExit) as refused:
        fmnist(["predict", files[0], "--server", f"http://127.0.0.1:{free_port()}"])
    assert refused.value.code == 2
    assert "the server does not answer" in capsys.readouterr().err


# --- the commands' defaults ---------------------------------------------------------------------


def test_fmnist_serve_and_ui_bind_to_localhost_by_default(tmp_path, monkeypatch):
    help_text = subprocess.run(
        [sys.executable, "-m", "pipeline", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "default 127.0.0.1" in help_text
    parser = build_parser()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert parser.parse_args(["ui"]).host == "127.0.0.1"
    params = load_params(ROOT / "params.yaml")
    follows = serve.serve_command(params, None, "127.0.0.1", 5001, tmp_path / "predictions")
    assert follows[follows.index("--alias") + 1] == "champion" and "--version" not in follows
    assert follows[follows.index("--poll-s") + 1] == str(params.serve.poll_s)
    assert follows[follows.index("--host") + 1] == "127.0.0.1" and follows[follows.index("--port") + 1] == "5001"
    assert follows[follows.index("--log-to") + 1] == str(tmp_path / "predictions")
    assert follows[follows.index("--sample-rate") + 1] == str(params.serve.sample_rate)
    pinned = serve.serve_command(params, "3", "127.0.0.1", 5001, None)
    assert pinned[pinned.index("--version") + 1] == "3" and "--alias" not in pinned and "--log-to" not in pinned

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args(["ui"])
    cmd = serve.ui_command(args.host, args.port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == store.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_ui_link_opens_the_experiments_training_runs():
    """MLflow 3.17's UI shows the GenAI overview unless the link asks for the machine-learning workflow."""
    assert serve.ui_link("127.0.0.1", 5000, "7") == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert serve.ui_link("127.0.0.1", 5000, None) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
