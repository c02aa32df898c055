"""The Open Inference Protocol codec: what a client encodes, the server decodes, and back, in binary and in JSON.

The server's side of it, on a real ``fmnist serve``, is in ``tests/test_serving.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.adapters import open_inference as oip

NAMES = ["T-shirt/top", "Trouser", "Pullover"]


def _answer(n: int):
    rng = np.random.default_rng(0)
    proba = np.round(rng.dirichlet(np.ones(10), n), 6)
    index = proba.argmax(axis=1)
    return index, [NAMES[i % 3] for i in index], proba


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_binary_request_decodes_to_the_images_sent(dtype):
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(dtype)
    images = images / np.float32(255) if dtype == "float32" else images
    body, headers = oip.encode_request(images, id="r-1")
    assert len(body) == int(headers[oip.HEADER]) + images.nbytes  # the pixels travel raw, after the JSON header
    request = oip.decode_request(body, headers[oip.HEADER])
    assert request.images.dtype == images.dtype
    np.testing.assert_array_equal(request.images, images)
    assert request.id == "r-1" and request.outputs == oip.OUTPUTS and request.binary == frozenset(oip.OUTPUTS)


def test_a_json_request_names_its_outputs_and_which_come_back_binary():
    doc = {
        "inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "UINT8", "data": [7] * 784}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "class_name"}],
    }
    request = oip.decode_request(json.dumps(doc).encode())
    assert request.images.shape == (1, 28, 28, 1) and (request.images == 7).all()
    assert request.outputs == ("probabilities", "class_name") and request.binary == {"probabilities"}
    everything = doc | {"outputs": None, "parameters": {"binary_data_output": True}}
    assert oip.decode_request(json.dumps({k: v for k, v in everything.items() if v}).encode()).binary == set(oip.OUTPUTS)


@pytest.mark.parametrize("binary", [True, False])
def test_an_answer_decodes_to_the_values_the_server_encoded(binary):
    index, names, proba = _answer(4)
    request = oip.Request(np.zeros((4, 28, 28), np.uint8), "r-2", oip.OUTPUTS, frozenset(oip.OUTPUTS if binary else ()))
    body, headers = oip.encode_response("fashion-mnist-cnn", "3", request, index, names, proba)
    assert headers["content-type"] == (oip.BINARY if binary else oip.JSON)
    answer = oip.decode_response(body, headers.get(oip.HEADER.lower()))
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("fashion-mnist-cnn", "3", "r-2")
    np.testing.assert_array_equal(answer["outputs"]["class_index"], index)
    assert answer["outputs"]["class_name"] == names
    np.testing.assert_array_equal(answer["outputs"]["probabilities"], proba)  # float64 both ways: no digit lost


def test_an_answer_asked_in_part_holds_only_those_outputs():
    index, names, proba = _answer(2)
    request = oip.Request(np.zeros((2, 28, 28), np.uint8), None, ("class_name",), frozenset({"class_name"}))
    body, headers = oip.encode_response("m", "1", request, index, names, proba)
    assert oip.decode_response(body, headers[oip.HEADER.lower()])["outputs"] == {"class_name": names}


BAD_REQUESTS = {
    "two inputs": ({"inputs": [{"name": "images"}, {"name": "images"}]}, '"inputs" must hold one tensor'),
    "another name": ({"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "UINT8"}]}, "must be named \"images\", got 'x'"),
    "a negative dimension": ({"inputs": [{"name": "images", "shape": [-1, 28, 28], "datatype": "UINT8"}]}, "non-negative"),
    "too few elements": (
        {"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "UINT8", "data": [0] * 784}]},
        r"data holds 784 elements, shape \[2, 28, 28\] needs 1568",
    ),
    "pixels past uint8": (
        {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [300] * 784}]},
        "must be UINT8 numbers",
    ),
    "no data": ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8"}]}, 'no "data" and no binary_data_size'),
    "an unknown output": (
        {
            "inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}],
            "outputs": [{"name": "logits"}],
        },
        r"unknown output\(s\) \['logits'\]",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_request_that_breaks_the_protocol_is_refused_saying_what_was_expected(case):
    doc, message = BAD_REQUESTS[case]
    with pytest.raises(oip.ProtocolError, match=message):
        oip.decode_request(json.dumps(doc).encode())


def test_a_truncated_answer_or_a_server_error_is_refused_by_the_client():
    index, names, proba = _answer(3)
    request = oip.Request(np.zeros((3, 28, 28), np.uint8), None, oip.OUTPUTS, frozenset(oip.OUTPUTS))
    body, headers = oip.encode_response("m", "1", request, index, names, proba)
    with pytest.raises(oip.ProtocolError, match="truncated"):
        oip.decode_response(body[:-5], headers[oip.HEADER.lower()])
    with pytest.raises(oip.ProtocolError, match="the server refused the request: bad pixels"):
        oip.decode_response(b'{"error": "bad pixels"}')
    with pytest.raises(oip.ProtocolError, match="must be uint8"):
        oip.encode_request(np.zeros((1, 28, 28), np.int64))
