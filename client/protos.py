"""TF Serving's own protos (PredictRequest, PredictResponse, TensorProto) without TensorFlow.

`tensorflow_serving.apis.predict_pb2` imports `tensorflow.core.framework.tensor_pb2`, and
importing anything under the `tensorflow` package runs TensorFlow's `__init__`: about 3 s and
several hundred MB in a process that only needs to build a request. The generated `_pb2.py`
files are nothing but a serialized FileDescriptorProto handed to protobuf's default pool, so
this module reads those descriptors from the installed files (tensorflow-serving-api and
tensorflow), adds them to the same default pool and asks protobuf for the message classes.
The result is the very same classes the generated modules produce: if TensorFlow is imported
later, its `_pb2` modules re-add identical descriptors (a no-op) and get these classes back.

When TensorFlow is already imported, the generated modules are used directly.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import numpy as np
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    wrappers_pb2,  # noqa: F401  (model.proto depends on it)
)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"

# tensorflow.DataType enum values (tensorflow/core/framework/types.proto).
DT_FLOAT = 1
DT_INT32 = 3
DT_INT64 = 9
_NUMPY_TO_DT = {np.dtype("float32"): DT_FLOAT, np.dtype("int32"): DT_INT32,
                np.dtype("int64"): DT_INT64}
_DT_TO_NUMPY = {v: k.newbyteorder("<") for k, v in _NUMPY_TO_DT.items()}
_TYPED_FIELD = {DT_FLOAT: "float_val", DT_INT32: "int_val", DT_INT64: "int64_val"}


def _site_root(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"package {package!r} is not installed: the client needs tensorflow-serving-api "
            "(pip install -e . in the project venv)"
        )
    return Path(next(iter(spec.submodule_search_locations))).parent


def _serialized_descriptor(pb2_file: Path) -> bytes:
    """The bytes passed to `AddSerializedFile` in a generated `_pb2.py` file."""
    tree = ast.parse(pb2_file.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args
                and isinstance(node.args[0], ast.Constant)):
            return node.args[0].value
    raise ImportError(f"{pb2_file} holds no serialized file descriptor; unexpected protoc output")


def _add_file(pool, proto_name: str) -> None:
    """Add `proto_name` and its dependencies to `pool`, reading them from installed _pb2 files."""
    try:
        pool.FindFileByName(proto_name)
        return
    except KeyError:
        pass
    top = proto_name.split("/", 1)[0]
    pb2 = _site_root(top) / (proto_name[: -len(".proto")] + "_pb2.py")
    if not pb2.is_file():
        raise ImportError(f"cannot find {pb2} for {proto_name}")
    blob = _serialized_descriptor(pb2)
    for dep in descriptor_pb2.FileDescriptorProto.FromString(blob).dependency:
        _add_file(pool, dep)
    pool.AddSerializedFile(blob)


def _load_classes():
    if "tensorflow" in sys.modules:  # already paid for: use the generated modules
        from tensorflow_serving.apis import predict_pb2

        return predict_pb2.PredictRequest, predict_pb2.PredictResponse
    pool = descriptor_pool.Default()
    _add_file(pool, "tensorflow_serving/apis/predict.proto")
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"tensorflow.serving.{n}")) for n in ("PredictRequest", "PredictResponse"))


PredictRequest, PredictResponse = _load_classes()


def fill_tensor(proto, array: np.ndarray) -> None:
    """Write `array` into a TensorProto as dtype + shape + raw little-endian `tensor_content`.

    Raw bytes are what TF Serving's own client examples avoid only for readability: the
    server copies them straight into the tensor buffer, with no per-element parsing.
    """
    dt = _NUMPY_TO_DT.get(array.dtype)
    if dt is None:
        raise TypeError(f"unsupported dtype {array.dtype} for a request tensor; "
                        f"expected one of {sorted(str(d) for d in _NUMPY_TO_DT)}")
    proto.dtype = dt
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    proto.tensor_content = np.ascontiguousarray(array, dtype=_DT_TO_NUMPY[dt]).tobytes()


def tensor_to_numpy(proto) -> np.ndarray:
    """Decode a TensorProto from either `tensor_content` or the typed repeated field.

    TF Serving answers with the typed field (`float_val`) by default and with
    `tensor_content` under `--enable_serialization_as_tensor_content`; both are read.
    As in `Tensor::FromProto`, fewer typed values than elements repeat the last one.
    """
    dtype = _DT_TO_NUMPY.get(proto.dtype)
    if dtype is None:
        raise TypeError(f"unsupported response tensor dtype enum {proto.dtype}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    size = int(np.prod(shape)) if shape else 1
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype=dtype)
    else:
        values = np.asarray(getattr(proto, _TYPED_FIELD[proto.dtype]), dtype=dtype)
        if values.size < size:
            fill = values[-1] if values.size else dtype.type(0)
            values = np.concatenate([values, np.full(size - values.size, fill, dtype=dtype)])
    if values.size != size:
        raise ValueError(f"response tensor holds {values.size} values for shape {list(shape)}")
    return values.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
