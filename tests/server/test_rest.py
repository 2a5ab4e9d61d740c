"""REST API against a real server process (docs/model_server.md, 'REST API')."""

from __future__ import annotations

import gzip
import json

import pytest


def test_status_lists_versions_highest_first(rest):
    status, body = rest.json("GET", "/v1/models/versioned")
    assert status == 200
    assert [v["version"] for v in body["model_version_status"]] == ["3", "2", "1"]
    assert body["model_version_status"][0] == {
        "version": "3", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}


def test_status_single_version_and_errors(rest):
    assert rest.json("GET", "/v1/models/versioned/versions/2")[1]["model_version_status"][0][
        "version"] == "2"
    status, body = rest.json("GET", "/v1/models/versioned/versions/7")
    assert (status, body) == (404, {"error": "Could not find version 7 of model versioned"})
    status, body = rest.json("GET", "/v1/models/nope")
    assert (status, body) == (404, {"error": "Could not find any versions of model nope"})
    # labels are ignored by status requests, even unknown ones
    status, body = rest.json("GET", "/v1/models/versioned/labels/whatever")
    assert status == 200 and len(body["model_version_status"]) == 3


def test_metadata(rest):
    status, body = rest.json("GET", "/v1/models/versioned/labels/stable/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "versioned", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert "__saved_model_init_op" in sigs
    x = sigs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_keras_row_and_columnar(rest):
    assert rest.json("POST", "/v1/models/keras:predict",
                     {"instances": [[1, 2, 3], [4, 5, 6]]}) == (200, {"predictions": [[6.0],
                                                                                        [15.0]]})
    assert rest.json("POST", "/v1/models/keras:predict",
                     {"inputs": {"x": [[1, 1, 1]]}}) == (200, {"outputs": [[3.0]]})
    # a single-input signature also takes named objects per row
    assert rest.json("POST", "/v1/models/keras:predict",
                     {"instances": [{"x": [0, 0, 1]}]}) == (200, {"predictions": [[1.0]]})


def test_versions_and_labels(rest):
    body = {"instances": [1.0, 0.5]}
    assert rest.json("POST", "/v1/models/versioned:predict", body)[1] == {
        "predictions": [3.0, 1.5]}
    assert rest.json("POST", "/v1/models/versioned/versions/1:predict", body)[1] == {
        "predictions": [1.0, 0.5]}
    assert rest.json("POST", "/v1/models/versioned/labels/canary:predict", body)[1] == {
        "predictions": [2.0, 1.0]}
    assert rest.json("POST", "/V1/MODELS/versioned/versions/2:predict", body)[0] == 200


def test_multi_output_formats(rest):
    status, body = rest.json("POST", "/v1/models/multiout:predict", {"instances": [[1, 2]]})
    assert status == 200
    assert body == {"predictions": [{"total": 3.0, "doubled": [2.0, 4.0], "count": 2}]}
    status, body = rest.json("POST", "/v1/models/multiout:predict", {"inputs": [[1, 2], [3, 4]]})
    assert body == {"outputs": {"total": [3.0, 7.0], "doubled": [[2.0, 4.0], [6.0, 8.0]],
                                "count": [2, 2]}}


def test_strings_b64_and_bytes_outputs(rest):
    status, body = rest.json("POST", "/v1/models/multi:predict", {
        "signature_name": "strings", "instances": ["ab", {"b64": "AP8="}]})
    assert status == 200
    # `_bytes` aliases come back base64 encoded; others as JSON strings / numbers
    assert body == {"predictions": [{"length": 2, "upper_bytes": {"b64": "QUI="}},
                                    {"length": 2, "upper_bytes": {"b64": "AP8="}}]}


def test_int_bool_inputs_and_signature_name(rest):
    status, body = rest.json("POST", "/v1/models/multi:predict", {
        "signature_name": "ints",
        "instances": [{"a": 1, "b": 2, "flag": True}, {"a": 5, "b": 2, "flag": False}]})
    assert (status, body) == (200, {"predictions": [3, -7]})
    status, body = rest.json("POST", "/v1/models/multi:predict", {
        "signature_name": "ints", "inputs": {"a": [9007199254740993], "b": [0], "flag": [True],
                                             "ignored_extra": 1}})
    assert (status, body) == (200, {"outputs": [9007199254740993]})


def test_float_formatting(rest):
    status, _h, raw = rest.request("POST", "/v1/models/versioned/versions/1:predict", {
        "instances": [0.1, 3, 9e6, 3e-5, 999999, 555557.5, 717887168, 1435774380]})
    assert status == 200
    assert raw.decode() == ('{"predictions": [0.1, 3.0, 9e+06, 3e-05, 999999.0, 555557.5, '
                            '717887168.0, 1.43577434e+09]}')
    status, _h, raw = rest.request("POST", "/v1/models/versioned/versions/1:predict",
                                   '{"instances": [NaN, Infinity, -Infinity, 1e39]}')
    assert raw.decode() == '{"predictions": [NaN, Infinity, -Infinity, Infinity]}'


def test_classify_and_regress(rest):
    status, body = rest.json("POST", "/v1/models/multi:regress", {
        "signature_name": "regress", "examples": [{"x": 1.5}, {"x": 2.0}]})
    assert (status, body) == (200, {"results": [3.0, 4.0]})
    status, body = rest.json("POST", "/v1/models/multi:classify", {
        "signature_name": "classify", "context": {"x": 0.5}, "examples": [{"x": 0.25}, {}]})
    assert (status, body) == (200, {"results": [[["pos", 0.25], ["neg", 0.75]],
                                                [["pos", 0.5], ["neg", 0.5]]]})
    status, body = rest.json("POST", "/v1/models/multi:regress", {"signature_name": "regress"})
    assert status == 400 and "'examples' is expected" in body["error"]
    status, body = rest.json("POST", "/v1/models/multi:regress", {
        "signature_name": "nope", "examples": [{"x": 1.0}]})
    assert (status, body["error"]) == (400, "No signature was found with the name: nope")
    # an integer literal becomes an int64 feature; the graph expects float
    status, body = rest.json("POST", "/v1/models/multi:regress", {
        "signature_name": "regress", "examples": [{"x": 2}]})
    assert status == 400


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/models/nope:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("/v1/models/versioned/versions/9:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(versioned, 9)"),
    ("/v1/models/versioned/labels/beta:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: beta"),
    ("/v1/models/nope/labels/beta:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: beta"),
    ("/v1/models/versioned:predict", {"signature_name": "x", "instances": [1.0]}, 400,
     'Serving signature name: "x" not found in signature def'),
    ("/v1/models/versioned:predict", {"signature_name": 3, "instances": [1.0]}, 400,
     "'signature_name' key must be a string value."),
    ("/v1/models/versioned:predict", {"instances": [1.0], "inputs": [1.0]}, 400,
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ("/v1/models/versioned:predict", {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/versioned:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("/v1/models/versioned:predict", {"instances": 1.0}, 400,
     "Expecting 'instances' to be an list/array"),
    ("/v1/models/versioned:PREDICT", {"instances": [1.0]}, 400,
     "Malformed request: POST /v1/models/versioned:PREDICT"),
    ("/v1/models/versioned/version/1:predict", {"instances": [1.0]}, 400,
     "Malformed request: POST /v1/models/versioned/version/1:predict"),
    ("/v1/models/versioned:predict?a=b", {"instances": [1.0]}, 400,
     "Malformed request: POST /v1/models/versioned:predict?a=b"),
    ("/v1/models/multi:predict", {"signature_name": "ints", "instances": [1]}, 400,
     "instances is a plain list, but expecting list of objects as multiple input tensors "
     "required as per tensorinfo_map"),
    ("/v1/models/multi:predict", {"signature_name": "ints", "inputs": {"a": [1], "b": [1]}},
     400, "Missing named input: flag in 'inputs' object."),
    ("/v1/models/multi:predict", {"signature_name": "ints",
                                  "instances": [{"a": 1, "b": 1, "flag": True, "c": 1}]}, 400,
     "JSON object: does not have named input: c"),
])
def test_predict_errors(rest, path, body, status, message):
    got_status, headers, raw = rest.request("POST", path, body)
    assert got_status == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw) == {"error": message}


@pytest.mark.parametrize(("model", "body", "fragment"), [
    ("versioned", {"instances": ["a"]}, "Type: String is not of expected type: float"),
    ("versioned", {"instances": [None]}, "Type: Null is not of expected type: float"),
    # rows are converted one at a time; the first row's shape binds the rest (TF Serving)
    ("versioned", {"instances": [[1.0], 2.0]}, "Failed to process element: 1 of "
     "'instances' list. Error: INVALID_ARGUMENT: Expecting shape [1] but got: []"),
    ("versioned", {"instances": [1.0, [2.0]]}, "Expecting shape [] but got: [1]"),
    ("versioned", {"inputs": [[1.0], 2.0]}, "found at incorrect level"),
    ("versioned", {"inputs": [1.0, [2.0]]}, "Encountered list at unexpected level"),
    ("versioned", {"instances": [{"b64": "AA=="}]}, "Type: Object is not of expected type"),
    ("multi", {"signature_name": "ints", "inputs": {"a": [1.0], "b": [1], "flag": [True]}},
     "is not of expected type: int64"),
    ("multi", {"signature_name": "ints", "inputs": {"a": [1], "b": [2**31], "flag": [True]}},
     "is not of expected type: int32"),
    ("multi", {"signature_name": "ints", "inputs": {"a": [1], "b": [1], "flag": [1]}},
     "is not of expected type: bool"),
    ("multi", {"signature_name": "strings", "instances": [{"b64": "%%%"}]},
     "Unable to base64 decode"),
    ("multi", {"signature_name": "strings", "instances": [{"b64": "AA==", "x": 1}]},
     "not formatted correctly for base64 data"),
    ("multi", {"inputs": [[1.0, 2.0], [1.0]]}, "Encountered list at unexpected size"),
    ("multi", {"inputs": [1.0, 2.0]}, "has shape [2] but signature"),
    ("keras", {"instances": [[1, 2]]}, "expects [None, 3]"),
])
def test_bad_tensors_are_400(rest, model, body, fragment):
    status, body = rest.json("POST", f"/v1/models/{model}:predict", body)
    assert status == 400
    assert fragment in body["error"]


def test_json_parsing_edge_cases(rest):
    status, body = rest.json("POST", "/v1/models/versioned:predict", "")
    assert (status, body) == (400, {"error": "JSON Parse error: The document is empty"})
    status, body = rest.json("POST", "/v1/models/versioned:predict", '{"instances": [1.0')
    assert status == 400 and body["error"].startswith("JSON Parse error:")
    assert "offset" in body["error"]
    status, body = rest.json("POST", "/v1/models/versioned:predict", "[1, 2]")
    assert status == 400 and "Is not object" in body["error"]
    # body errors come before the model lookup
    status, body = rest.json("POST", "/v1/models/unknown:predict", "{bad")
    assert status == 400
    # trailing bytes are ignored; the first of duplicate keys wins (rapidjson behaviour)
    status, body = rest.json("POST", "/v1/models/versioned/versions/1:predict",
                             '{"instances": [2.0], "instances": ["x"]} trailing')
    assert (status, body) == (200, {"predictions": [2.0]})
    status, body = rest.json("POST", "/v1/models/versioned:predict",
                             '{"pad": ' + "[" * 50000 + "]" * 50000 + ', "instances": [1]}')
    # TF Serving parses any depth; Python's parser stops near 1000 levels (docs/model_server.md,
    # 'Conformance table')
    assert (status, body) == (400, {"error": "JSON Parse error: nesting too deep for this server"})
    assert rest.json("POST", "/v1/models/versioned/versions/1:predict",
                     {"instances": [1]}) == (200, {"predictions": [1.0]})


def test_url_conversion_errors_have_empty_body(rest):
    status, _h, raw = rest.request("POST", "/v1/models/versioned/versions/"
                                   "99999999999999999999:predict", {"instances": [1.0]})
    assert (status, raw) == (400, b"")
    status, _h, raw = rest.request("POST", "/v1/models/vers%ZZ:predict", {"instances": [1.0]})
    assert (status, raw) == (400, b"")


def test_percent_decoded_model_names(rest):
    status, body = rest.json("POST", "/v1/models/version%65d/versions/1:predict",
                             {"instances": [1.0]})
    assert (status, body) == (200, {"predictions": [1.0]})


def test_routing_and_methods(rest):
    assert rest.json("GET", "/v1/models") == (400, {"error": "Missing model name in request."})
    status, headers, raw = rest.request("GET", "/not/v1")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    status, body = rest.json("PUT", "/v1/models/versioned")
    assert status == 400 and body["error"].startswith("Malformed request: PUT")
    status, body = rest.json("POST", "/v1/models/versioned/metadata")
    assert status == 400
    # GET .../METADATA is a status request (case-sensitive sub-resource)
    status, body = rest.json("GET", "/v1/models/versioned/METADATA")
    assert status == 200 and "model_version_status" in body


def test_cors(rest):
    status, headers, _ = rest.request("GET", "/v1/models/keras")
    assert headers["Access-Control-Allow-Origin"] == "*"
    status, _h, raw = rest.request("OPTIONS", "/v1/models/keras:predict",
                                   headers={"Origin": "https://example.com"})
    assert (status, raw) == (200, b"")
    status, _h, raw = rest.request("OPTIONS", "/v1/models/keras:predict")
    assert (status, raw) == (400, b"")


def test_gzip_and_chunked_bodies(rest):
    body = gzip.compress(json.dumps({"instances": [4.0]}).encode())
    status, _h, raw = rest.request("POST", "/v1/models/versioned/versions/1:predict", body,
                                   {"Content-Encoding": "gzip"})
    assert (status, json.loads(raw)) == (200, {"predictions": [4.0]})
    chunked = b'5\r\n{"ins\r\n11\r\ntances": [5.0]}  \r\n0\r\n\r\n'
    status, _h, raw = rest.request("POST", "/v1/models/versioned/versions/1:predict", chunked,
                                   {"Transfer-Encoding": "chunked"})
    assert (status, json.loads(raw)) == (200, {"predictions": [5.0]})


def test_oversized_body_is_413_and_server_keeps_serving(rest):
    big = json.dumps({"instances": [1.0] * 100000})
    status, _h, raw = rest.request("POST", "/v1/models/versioned:predict", big)
    assert status == 413 and "exceeds the limit" in json.loads(raw)["error"]
    assert rest.json("POST", "/v1/models/versioned/versions/1:predict",
                     {"instances": [1.0]}) == (200, {"predictions": [1.0]})


def test_head_shaped_model_columnar(rest):
    from tests.server.savedmodels import STATE_SIZE

    status, body = rest.json("POST", "/v1/models/head:predict", {"inputs": {
        "state": [[0.1] * STATE_SIZE], "cand_item_ids": [1, 2, 3], "cand_cate_ids": [4, 5, 6]}})
    assert status == 200 and len(body["outputs"]) == 3
    assert all(0.0 < v < 1.0 for v in body["outputs"])


# ------------------------------------------------------------ conformance gaps (issue 16)
def test_b64_string_scalar_in_columnar_form(rest):
    """A scalar string in and out: once an HTTP 500 (AttributeError on the bytes output)."""
    assert rest.json("POST", "/v1/models/multi:predict", {
        "signature_name": "scalar", "inputs": {"b64": "/wA="}}) == (
        200, {"outputs": {"length": 2, "text": {"b64": "/wA="}}})  # not UTF-8: b64 out
    assert rest.json("POST", "/v1/models/multi:predict", {
        "signature_name": "scalar", "inputs": "hi"}) == (
        200, {"outputs": {"length": 2, "text": "hi"}})


@pytest.mark.parametrize(("instances", "message"), [
    ([[1.0, 2.0], [1.0]], "Failed to process element: 1 of 'instances' list. Error: "
     "INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"),
    ([[[1.0, 2.0]], [[1.0], [2.0]]], "Failed to process element: 1 of 'instances' list. "
     "Error: INVALID_ARGUMENT: Expecting shape [1,2] but got: [2,1]"),
])
def test_ragged_rows_and_rows_of_different_shapes(rest, instances, message):
    assert rest.json("POST", "/v1/models/multi:predict", {"instances": instances}) == (
        400, {"error": message})


def test_named_rows_name_the_key(rest):
    status, body = rest.json("POST", "/v1/models/multi:predict", {
        "signature_name": "ints", "instances": [{"a": 1, "b": 2, "flag": True},
                                                {"a": [1], "b": 2, "flag": True}]})
    assert (status, body["error"]) == (400, "Failed to process element: 1 key: a of "
                                            "'instances' list. Error: INVALID_ARGUMENT: "
                                            "Expecting shape [] but got: [1]")


@pytest.mark.parametrize(("raw", "message"), [
    ("not json", "JSON Parse error: Invalid value. at offset: 0"),
    ('{"instances": [1, 2}', "JSON Parse error: Missing a comma or ']' after an array "
     "element. at offset: 19"),
    ('{"instances" [1]}', "JSON Parse error: Missing a colon after a name of object member. "
     "at offset: 13"),
    ('{"instances": [1] "x": 1}', "JSON Parse error: Missing a comma or '}' after an object "
     "member. at offset: 18"),
    ("{instances: 1}", "JSON Parse error: Missing a name for object member. at offset: 1"),
    ('{"a": "b', "JSON Parse error: Missing a closing quotation mark in string. at offset: 8"),
])
def test_invalid_json_messages_are_rapidjsons(rest, raw, message):
    assert rest.json("POST", "/v1/models/multi:predict", raw) == (400, {"error": message})
