"""TF Serving's REST JSON dialect: request tensors in, response text out.

Parsing follows the signature's input dtypes (no inference from JSON), shapes are read from
the first element at each level and then checked, and floats are written with TF Serving's
WriteDecimal rule (6 significant digits unless that does not round-trip) from the float32
value itself, so `0.1` stays `0.1` and not `0.10000000149011612`. The request and response
formats are described in docs/model_server.md, 'REST API'.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np
from tensorflow.core.framework import types_pb2

from model_server.errors import ServingError, invalid
from model_server.int_ranges import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    UINT64_MAX,
)
from model_server.limits import DEFAULT_LIMITS, POINTER_BYTES, RequestLimits
from model_server.tensors import dtype_name

# JSON integers accepted per dtype; the narrow types are checked against int32, as in TF Serving
_INT_RANGES = {
    types_pb2.DT_INT32: (INT32_MIN, INT32_MAX), types_pb2.DT_INT16: (INT32_MIN, INT32_MAX),
    types_pb2.DT_INT8: (INT32_MIN, INT32_MAX), types_pb2.DT_UINT8: (INT32_MIN, INT32_MAX),
    types_pb2.DT_INT64: (INT64_MIN, INT64_MAX), types_pb2.DT_UINT32: (0, UINT32_MAX),
    types_pb2.DT_UINT64: (0, UINT64_MAX),
}
_NP = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32, types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_,
}


# ------------------------------------------------------------------------------ parsing
def _first_wins(pairs):
    # rapidjson's FindMember returns the first of duplicate keys; dict() keeps the last
    return dict(reversed(pairs))


_DECODER = json.JSONDecoder(object_pairs_hook=_first_wins)


def parse_body(body: bytes) -> dict:
    """Parse a request body like TF Serving: trailing bytes after the object are ignored."""
    text = body.decode("utf-8", "surrogateescape")
    stripped = text.lstrip()
    if not stripped:
        raise invalid("JSON Parse error: The document is empty")
    try:
        value, _end = _DECODER.raw_decode(stripped)
    except json.JSONDecodeError as exc:
        offset = exc.pos + (len(text) - len(stripped))
        if exc.msg.startswith("Unterminated string"):
            offset = len(text)  # rapidjson stops at the end of the input
        raise invalid(f"JSON Parse error: {_rapidjson_message(exc.msg, stripped, exc.pos)} "
                      f"at offset: {offset}") from None
    except RecursionError:
        raise invalid("JSON Parse error: nesting too deep for this server") from None
    if not isinstance(value, dict):
        raise invalid("JSON Parse error: The document root must be an object: Is not object")
    return value


# Python's JSONDecodeError texts -> rapidjson's GetParseError_En texts (what TF Serving says)
_PARSE_MESSAGES = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
    "Invalid control character at": "Invalid encoding in string.",
}


def _rapidjson_message(msg: str, text: str, pos: int) -> str:
    if msg == "Expecting ',' delimiter":
        return ("Missing a comma or ']' after an array element." if _innermost(text, pos) == "["
                else "Missing a comma or '}' after an object member.")
    for python_text, rapidjson_text in _PARSE_MESSAGES.items():
        if msg.startswith(python_text):
            return rapidjson_text
    return msg


def _innermost(text: str, end: int) -> str:
    """The innermost bracket still open at `end` ('[' or '{'), skipping strings."""
    stack, in_string, escaped = [], False, False
    for ch in text[:end]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _show(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)[:200]
    except (TypeError, ValueError):
        return repr(value)[:200]


def _type_error(value, dtype: int) -> ServingError:
    return invalid(f"JSON Value: {_show(value)} Type: {_json_type(value)} is not of expected "
                   f"type: {dtype_name(dtype)}")


def is_b64(value) -> bool:
    return isinstance(value, dict) and "b64" in value


def _b64(value) -> bytes:
    if len(value) != 1 or not isinstance(value.get("b64"), str):
        raise invalid(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"Unable to base64 decode: {value['b64'][:100]}") from None


def _infer_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value, shape, level, out, dtype):
    if isinstance(value, list):
        if level >= len(shape):
            raise invalid(f"Encountered list at unexpected level: {level} expected < "
                          f"{len(shape)}")
        if len(value) != shape[level]:
            raise invalid(f"Encountered list at unexpected size: {len(value)} at level: "
                          f"{level} expected size: {shape[level]}")
        if level + 1 == len(shape):
            for item in value:
                if isinstance(item, list):
                    raise invalid(f"Encountered list at unexpected level: {level + 1} expected "
                                  f"< {len(shape)}")
                out.append(_scalar(item, dtype, level + 1, len(shape)))
        else:
            for item in value:
                _flatten(item, shape, level + 1, out, dtype)
        return
    if level != len(shape):
        raise invalid(f"JSON Value: {_show(value)} found at incorrect level: {level + 1} in the "
                      f"JSON DOM. Expected at level: {len(shape) + 1}")
    out.append(_scalar(value, dtype, level, len(shape)))


def _scalar(value, dtype, level, rank):
    t = type(value)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if t is float or t is int:
            return value
    elif dtype in _INT_RANGES:
        if t is int:
            lo, hi = _INT_RANGES[dtype]
            if not lo <= value <= hi:
                raise _type_error(value, dtype)
            return value
    elif dtype == types_pb2.DT_BOOL:
        if t is bool:
            return value
    elif dtype == types_pb2.DT_STRING:
        if t is str:
            return value.encode("utf-8", "surrogateescape")
        if t is dict and is_b64(value):
            return _b64(value)
    else:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {_show(value)} to "
                           f"type: {dtype_name(dtype)}")
    if t is dict and is_b64(value) and dtype != types_pb2.DT_STRING:
        raise _type_error(value, dtype)
    raise _type_error(value, dtype)


def _flat_values(value, dtype: int, shape: list[int]) -> list:
    flat: list = []
    _flatten(value, shape, 0, flat, dtype)
    return flat


def _array(flat: list, dtype: int, shape) -> np.ndarray:
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.array(flat, dtype=_NP[dtype]).reshape(shape)


def _itemsize(dtype: int) -> int:
    return POINTER_BYTES if dtype == types_pb2.DT_STRING else np.dtype(_NP.get(
        dtype, np.float64)).itemsize


def to_array(value, dtype: int, admit=None) -> np.ndarray:
    """A JSON tensor (scalar or nested lists) -> numpy array of the signature dtype;
    `admit(shape, itemsize)` may refuse the declared shape before any value is converted."""
    shape = _infer_shape(value)
    if admit is not None:
        admit(tuple(shape), _itemsize(dtype))
    return _array(_flat_values(value, dtype, shape), dtype, shape)


def request_inputs(body: dict, sig, limits: RequestLimits = DEFAULT_LIMITS
                   ) -> tuple[dict[str, np.ndarray], bool]:
    """The signature inputs from a predict body; returns (inputs, row_format). Each input's
    shape is admitted by `limits` (model_server.limits) before its values are converted."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                      "keys to exist")
    if not (has_instances or has_inputs):
        raise invalid("Missing 'inputs' or 'instances' key")
    names = sig.input_names
    budget = limits.budget()

    def admitter(name):
        return lambda shape, itemsize: budget.admit(sig, name, shape, itemsize)

    if has_instances:
        inputs, row_format = _rows(body["instances"], sig, names, admitter), True
    else:
        inputs, row_format = _columns(body["inputs"], sig, names, admitter), False
    for alias, array in inputs.items():
        sig.check_shape(alias, array.shape)
    return inputs, row_format


def _wrap(index, key, exc: ServingError) -> ServingError:
    where = f"{index}" + (f" key: {key}" if key else "")
    return ServingError(exc.code, f"Failed to process element: {where} of 'instances' list. "
                        f"Error: {exc.code}: {exc.message}")


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class _Column:
    """One input's rows, converted one row at a time as TF Serving's AddInstanceItem does:
    the first row fixes the size and shape every later row must have."""

    def __init__(self, name: str, dtype: int, rows: int, admit):
        self.name, self.dtype, self.rows, self.admit = name, dtype, rows, admit
        self.shape = None
        self.size = 0
        self.flat: list = []

    def add(self, value) -> None:
        shape = _infer_shape(value)
        values = _flat_values(value, self.dtype, shape)
        if self.shape is None:
            self.admit((self.rows, *shape), _itemsize(self.dtype))
            self.shape, self.size = shape, len(values)
        elif len(values) != self.size:
            raise invalid(f"Expecting tensor size: {self.size} but got: {len(values)}")
        elif shape != self.shape:
            raise invalid(f"Expecting shape {_shape_text(self.shape)} but got: "
                          f"{_shape_text(shape)}")
        self.flat.extend(values)

    def array(self) -> np.ndarray:
        return _array(self.flat, self.dtype, (self.rows, *self.shape))


def _rows(instances, sig, names, admitter):
    if not isinstance(instances, list):
        raise invalid("Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    first = instances[0]
    named = isinstance(first, dict) and not is_b64(first)
    if len(names) > 1 and not named:
        raise invalid("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
    n = len(instances)
    columns = {name: _Column(name, sig.inputs[name], n, admitter(name)) for name in names}
    expected = set(names)
    for i, item in enumerate(instances):
        if not named:
            if isinstance(item, dict) and not is_b64(item):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
            try:
                columns[names[0]].add(item)
            except ServingError as exc:
                raise _wrap(i, "", exc) from None
            continue
        if not isinstance(item, dict) or is_b64(item):
            kind = "list" if isinstance(item, list) else "value"
            raise invalid(f"Expecting object but got {kind} at item {i} of input list")
        for key, value in item.items():
            if key not in expected:
                raise invalid(f"JSON object: does not have named input: {key}")
            try:
                columns[key].add(value)
            except ServingError as exc:
                raise _wrap(i, key, exc) from None
        if set(item) != expected:
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                          f"{_show(item)} keys must be equal to: {','.join(sorted(expected))}")
    return {name: column.array() for name, column in columns.items()}


def _columns(inputs, sig, names, admitter):
    if isinstance(inputs, dict) and not is_b64(inputs):
        out = {}
        for name in names:
            if name not in inputs:
                raise invalid(f"Missing named input: {name} in 'inputs' object.")
            out[name] = to_array(inputs[name], sig.inputs[name], admitter(name))
        return out
    if len(names) > 1:
        raise invalid("inputs is a plain value/list, but expecting an object as multiple input "
                      "tensors required as per tensorinfo_map")
    return {names[0]: to_array(inputs, sig.inputs[names[0]], admitter(names[0]))}


# ----------------------------------------------------------------------------- writing
def format_floats(flat: np.ndarray) -> list[str]:
    """TF Serving's WriteDecimal for a 1-D float32/float64 array."""
    is32 = flat.dtype == np.float32
    values = flat.tolist()
    texts = [f"{v:.6g}" for v in values]
    finite = np.isfinite(flat)
    if len(texts):
        back = np.array(texts if finite.all() else [t if f else "0" for t, f in
                                                     zip(texts, finite.tolist(), strict=False)],
                        dtype=np.float64)
        if is32:
            back = back.astype(np.float32)
        mismatch = np.flatnonzero((back != flat) & finite)
        long_format = "%.9g" if is32 else "%.17g"
        for i in mismatch.tolist():
            texts[i] = long_format % values[i]
    for i, text in enumerate(texts):
        if "." in text or "e" in text:
            continue
        if text in ("inf", "-inf", "nan", "-nan"):
            v = values[i]
            texts[i] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        else:
            texts[i] = text + ".0"
    return texts


def _element_texts(array: np.ndarray, alias: str) -> list[str]:
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f":
        if array.dtype == np.float16:
            flat = flat.astype(np.float32)
        return format_floats(flat)
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "OSU":
        as_b64 = alias.endswith("_bytes")
        out = []
        for v in flat.tolist():
            raw = v if isinstance(v, bytes) else str(v).encode()
            if not as_b64:
                try:
                    out.append(json.dumps(raw.decode("utf-8"), ensure_ascii=False))
                    continue
                except UnicodeDecodeError:
                    pass  # not UTF-8: send it losslessly as base64 (documented policy)
            out.append('{"b64": "' + base64.b64encode(raw).decode() + '"}')
        return out
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:])
                           for i in range(shape[0])) + "]"


def tensor_text(array: np.ndarray, alias: str) -> str:
    return _nest(_element_texts(array, alias), array.shape)


def _rows_of(array: np.ndarray, alias: str) -> list[str]:
    texts = _element_texts(array, alias)
    n = array.shape[0]
    step = len(texts) // n if n else 0
    return [_nest(texts[i * step:(i + 1) * step], array.shape[1:]) for i in range(n)]


def response_text(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    if not row_format:
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return '{"outputs": ' + tensor_text(array, alias) + "}"
        parts = [json.dumps(alias) + ": " + tensor_text(a, alias) for alias, a in outputs.items()]
        return '{"outputs": {' + ", ".join(parts) + "}}"
    batch = None
    for alias, array in outputs.items():
        if array.ndim == 0:
            raise invalid(f"Tensor name: {alias} has no shape information ")
        if batch is None:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise invalid(f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} "
                          f"expecting: {batch}")
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return '{"predictions": [' + ", ".join(_rows_of(array, alias)) + "]}"
    columns = {alias: _rows_of(array, alias) for alias, array in outputs.items()}
    keys = {alias: json.dumps(alias) for alias in outputs}
    rows = ["{" + ", ".join(f"{keys[a]}: {columns[a][i]}" for a in outputs) + "}"
            for i in range(batch or 0)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


# ------------------------------------------------------------------- classify/regress
def regression_text(result) -> str:
    """`{"results": [value, ...]}` of a RegressionResult (float32, like every REST output)."""
    values = format_floats(np.array([r.value for r in result.regressions], np.float32))
    return '{"results": [' + ", ".join(values) + "]}"


def classification_text(result) -> str:
    """`{"results": [[[label, score], ...], ...]}` of a ClassificationResult."""
    rows = []
    for classifications in result.classifications:
        classes = classifications.classes
        scores = format_floats(np.array([c.score for c in classes], np.float32))
        pairs = [f"[{json.dumps(c.label)}, {s}]" for c, s in zip(classes, scores, strict=True)]
        rows.append("[" + ", ".join(pairs) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def examples_input(body: dict, method: str, limits: RequestLimits = DEFAULT_LIMITS):
    """{"context"?, "examples"} -> tensorflow.serving.Input with tf.Examples (their number
    checked against the limits before any is built)."""
    from tensorflow_serving.apis import input_pb2

    if "examples" not in body:
        raise invalid("Failed to process classify request: key 'examples' is expected and was "
                      "not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise invalid("Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid("'examples' value is an empty array")
    limits.budget().admit_examples(len(examples), 0)
    out = input_pb2.Input()
    if "context" in body:
        target = out.example_list_with_context
        _fill_example(body["context"], target.context)
    else:
        target = out.example_list
    for item in examples:
        _fill_example(item, target.examples.add())
    return out


def _fill_example(obj, example) -> None:
    if not isinstance(obj, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(obj)}")
    for name, value in obj.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[name]
        kind = None
        for v in values:
            t = type(v)
            if t is str or is_b64(v):
                this = "bytes"
            elif t is bool or t is int:
                this = "int64"
            elif t is float:
                this = "float"
            else:
                raise invalid(f"Feature: {name} has element with unexpected JSON type: "
                              f"{_json_type(v)}")
            if kind is None:
                kind = this
            elif this != kind:
                raise invalid(f"Unexpected element type in feature: {name} expecting type: "
                              f"{kind}")
            if this == "bytes":
                feature.bytes_list.value.append(_b64(v) if t is dict else v.encode())
            elif this == "int64":
                if t is int and not INT64_MIN <= v <= INT64_MAX:
                    raise invalid("Only int64_t is supported")
                feature.int64_list.value.append(int(v))
            else:
                feature.float_list.value.append(v)
