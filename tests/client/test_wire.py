"""Unit tests of pure logic: tensor encoding/decoding, candidate parsing, target parsing.

The encoding is checked against TensorFlow's own TensorProto parser (tf.make_ndarray), so a
request the client builds is read by the server exactly as intended.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from client.candidates import check_user, padded_candidates, parse_id_list, read_candidates
from client.errors import InvalidRequest, ModelServerError, ModelServerUnavailable
from client.protos import DT_FLOAT, DT_INT64, PredictRequest, fill_tensor, tensor_to_numpy
from client.transport import _Retrying, _Transient, parse_target


@pytest.mark.parametrize("array", [
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 12),
    np.array([0, 1, 2**62, 2**63 - 1], dtype=np.int64),
    np.array([3], dtype=np.int32),
])
def test_fill_tensor_is_read_back_by_tensorflow(array):
    tf = pytest.importorskip("tensorflow")
    request = PredictRequest()
    fill_tensor(request.inputs["x"], array)
    decoded = tf.make_ndarray(request.inputs["x"])
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)
    np.testing.assert_array_equal(tensor_to_numpy(request.inputs["x"]), array)


def test_decode_typed_field_like_tf_serving_answers():
    proto = PredictRequest().inputs["ctr"]
    proto.dtype = DT_FLOAT
    proto.tensor_shape.dim.add().size = 3
    proto.float_val.extend([0.25, 0.5, 0.75])
    np.testing.assert_array_equal(tensor_to_numpy(proto), np.float32([0.25, 0.5, 0.75]))
    # fewer typed values than elements repeat the last one (Tensor::FromProto semantics)
    del proto.float_val[1:]
    np.testing.assert_array_equal(tensor_to_numpy(proto), np.float32([0.25] * 3))


def test_decode_rejects_wrong_sizes_and_dtypes():
    proto = PredictRequest().inputs["x"]
    proto.dtype = DT_INT64
    proto.tensor_shape.dim.add().size = 3
    proto.tensor_content = np.arange(2, dtype=np.int64).tobytes()
    with pytest.raises(ValueError, match="2 values for shape \\[3\\]"):
        tensor_to_numpy(proto)
    with pytest.raises(TypeError, match="unsupported dtype float64"):
        fill_tensor(PredictRequest().inputs["y"], np.zeros(2))


def test_client_does_not_import_tensorflow():
    code = ("import sys, client, client.__main__; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("count, padded", [(1, 8), (8, 8), (9, 16), (33, 64), (64, 64),
                                           (65, 100), (100, 100), (101, 200), (250, 300)])
def test_candidates_are_padded_to_fixed_sizes_with_the_first_one(count, padded):
    items = np.arange(10, 10 + count, dtype=np.int64)
    cates = items % 7
    inputs = padded_candidates(items, cates)
    assert inputs["cand_item_ids"].shape == inputs["cand_cate_ids"].shape == (1, padded)
    np.testing.assert_array_equal(inputs["cand_item_ids"][0, :count], items)
    np.testing.assert_array_equal(inputs["cand_cate_ids"][0, :count], cates)
    assert (inputs["cand_item_ids"][0, count:] == items[0]).all()
    assert (inputs["cand_cate_ids"][0, count:] == cates[0]).all()


def test_parse_id_list():
    np.testing.assert_array_equal(parse_id_list("1, 2,3", "--items"), [1, 2, 3])
    for bad, fragment in [("", "empty"), ("1,,2", "element 2"), ("1,x", "'x'"),
                          ("1,-2", "'-2'"), (str(2**63), r"below 2\^63")]:
        with pytest.raises(InvalidRequest, match=fragment):
            parse_id_list(bad, "--items")


def test_check_user_takes_python_and_numpy_integers_in_the_id_range():
    assert check_user(np.int64(11)) == 11 and type(check_user(np.int64(11))) is int
    assert check_user(np.uint64(2**63 - 1)) == 2**63 - 1
    with pytest.raises(InvalidRequest, match=rf"user_id must be in \[0, 2\^63-1\], got {2**63}"):
        check_user(np.uint64(2**63))


def test_read_candidates_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("item_id,category_id\n10,7\n11,9\n\n12\n")
    items, cates = read_candidates(csv_file)
    assert items.tolist() == [10, 11, 12] and cates.tolist() == [7, 9, 0]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"item_id": i, "category_id": c})
                               for i, c in [(5, 1), (6, 2)]) + "\n")
    items, cates = read_candidates(jsonl)
    assert items.tolist() == [5, 6] and cates.tolist() == [1, 2]


@pytest.mark.parametrize("name, text, fragment", [
    ("a.csv", "10,x\n", "a.csv:1: category_id must be a non-negative integer"),
    ("b.csv", "item,cat\n1,2\n", "header must be item_id,category_id"),
    ("c.csv", "1,2,3\n", "c.csv:1: expected item_id,category_id, got 3 columns"),
    ("d.jsonl", '{"item_id": 1}\n{oops\n', "d.jsonl:2: not valid JSON"),
    ("e.jsonl", '[1, 2]\n', "expected an object with item_id"),
    ("f.jsonl", '{"item_id": -4}\n', "item_id must be in"),
    ("g.csv", "\n\n", "holds no candidates"),
])
def test_read_candidates_errors_name_the_line(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidRequest, match=fragment):
        read_candidates(path)
    with pytest.raises(InvalidRequest, match="does not exist"):
        read_candidates(tmp_path / "missing.csv")


def test_parse_target():
    assert parse_target("localhost:9000", 8500) == ("localhost", 9000)
    assert parse_target("example", 8500) == ("example", 8500)
    assert parse_target("[::1]:8501", 8500) == ("::1", 8501)
    with pytest.raises(InvalidRequest, match="host:port"):
        parse_target("host:http", 8500)


class _Scripted(_Retrying):
    """The retry loop with a scripted `_send` (pure logic: no network)."""

    def __init__(self, outcomes, retries=2):
        self.target, self.retries, self.backoff_s = "test:1", retries, 0.0
        self.outcomes, self.sent = list(outcomes), 0

    def _send(self, request, timeout):
        self.sent += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_retries_only_unavailable_and_stay_bounded():
    ok = np.float32([0.5])
    t = _Scripted([_Transient("UNAVAILABLE"), ok])
    scores, attempts = t.call(None, time.perf_counter() + 1)
    assert attempts == 2 and scores is ok
    t = _Scripted([_Transient("UNAVAILABLE")] * 5)
    with pytest.raises(ModelServerUnavailable, match="after 3 attempt"):
        t.call(None, time.perf_counter() + 1)
    assert t.sent == 3
    t = _Scripted([ModelServerError("INVALID_ARGUMENT", "bad shape"), ok])
    with pytest.raises(ModelServerError, match="INVALID_ARGUMENT: bad shape"):
        t.call(None, time.perf_counter() + 1)
    assert t.sent == 1
    t = _Scripted([ok])
    with pytest.raises(ModelServerError, match="DEADLINE_EXCEEDED"):
        t.call(None, time.perf_counter() - 0.001)
    assert t.sent == 0
