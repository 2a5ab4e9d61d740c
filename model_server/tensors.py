"""TensorProto <-> numpy conversion for the gRPC hot path.

`tf.make_tensor_proto` writes `tensor_content`, but TF Serving answers with the typed repeated
fields (`float_val`, `int64_val`, ...) and clients read them, so responses are
built here field by field. Requests are read the way `Tensor::FromProto` does: from
`tensor_content` when present (zero-copy `np.frombuffer`), else from the typed field, where
fewer values than elements repeat the last one and no values mean zeros.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from model_server.errors import invalid
from model_server.limits import POINTER_BYTES

# DataType enum -> (numpy dtype, TensorProto typed field, TF dtype name)
_DTYPES: dict[int, tuple[np.dtype, str, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val", "float"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val", "double"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val", "int32"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val", "int16"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val", "int8"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val", "uint8"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val", "uint16"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val", "int64"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val", "uint32"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val", "uint64"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val", "bool"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val", "string"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val", "half"),
}
_BY_NUMPY = {np_dtype: enum for enum, (np_dtype, _f, _n) in _DTYPES.items() if enum != types_pb2.DT_STRING}


def dtype_name(enum: int) -> str:
    """TF's DataTypeString spelling ("float", "int64", ...), used in error messages."""
    if enum in _DTYPES:
        return _DTYPES[enum][2]
    return types_pb2.DataType.Name(enum)[3:].lower() if enum in types_pb2.DataType.values() else str(enum)


def numpy_dtype(enum: int) -> np.dtype:
    return _DTYPES[enum][0]


def dtype_enum(array: np.ndarray) -> int:
    """DataType enum of a numpy array (bytes/str/object arrays are DT_STRING)."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise invalid(f"tensor type {array.dtype} cannot be sent in a TensorProto") from None


def proto_shape(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise invalid("Cannot parse tensor from proto: unknown rank is not a valid tensor shape")
    dims = tuple(d.size for d in shape.dim)
    if any(d < 0 for d in dims):
        raise invalid(f"Cannot parse tensor from proto: negative dimension in shape {list(dims)}")
    return dims


def decoded_bytes(proto: tensor_pb2.TensorProto) -> tuple[int, int]:
    """(bytes per element, extra bytes) decoding `proto` will allocate, known before any
    allocation: string tensors hold one reference per element plus their bytes."""
    if proto.dtype == types_pb2.DT_STRING:
        return POINTER_BYTES, sum(len(v) for v in proto.string_val)
    info = _DTYPES.get(proto.dtype)
    if info is not None:
        return info[0].itemsize, 0
    import tensorflow as tf

    try:
        return max(tf.as_dtype(proto.dtype).size, 1), 0
    except TypeError:
        raise invalid(f"Cannot parse tensor from proto: unknown dtype {proto.dtype}") from None


def to_numpy(proto: tensor_pb2.TensorProto, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decode a request TensorProto (its dtype already checked against the signature, its
    declared `shape` already admitted by model_server.limits)."""
    dtype = proto.dtype
    shape = proto_shape(proto) if shape is None else shape
    size = 1
    for d in shape:
        size *= d
    info = _DTYPES.get(dtype)
    if info is None:
        import tensorflow as tf

        try:
            return tf.make_ndarray(proto)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            raise invalid(f"Cannot parse tensor from proto: {exc}") from None
    np_dtype, field_name, _ = info
    if proto.tensor_content and dtype != types_pb2.DT_STRING:
        content = proto.tensor_content
        if len(content) != size * np_dtype.itemsize:
            raise invalid(
                f"Cannot parse tensor from proto: tensor_content holds {len(content)} bytes, "
                f"shape {list(shape)} of {dtype_name(dtype)} needs {size * np_dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=np_dtype).reshape(shape)
    values = getattr(proto, field_name)
    n = len(values)
    if dtype == types_pb2.DT_HALF:
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    elif dtype == types_pb2.DT_STRING:
        flat = np.empty(n, dtype=object)
        flat[:] = list(values)
    else:
        flat = np.array(values, dtype=np_dtype)
    if n == size:
        return flat.reshape(shape)
    if n > size:
        raise invalid(
            f"Cannot parse tensor from proto: {n} values in {field_name} for shape {list(shape)}"
        )
    if n == 0:
        if dtype == types_pb2.DT_STRING:
            out = np.empty(size, dtype=object)
            out[:] = b""
            return out.reshape(shape)
        return np.zeros(shape, dtype=np_dtype)
    # Tensor::FromProto repeats the last value to fill the tensor
    out = np.empty(size, dtype=np_dtype)
    out[:n] = flat
    out[n:] = flat[-1]
    return out.reshape(shape)


def fill_proto(proto: tensor_pb2.TensorProto, array: np.ndarray, as_content: bool = False) -> None:
    """Write `array` into `proto` with TF Serving's encoding (typed fields by default)."""
    enum = dtype_enum(array)
    proto.dtype = enum
    proto.tensor_shape.SetInParent()  # a scalar has an empty but present shape
    dims = proto.tensor_shape.dim
    for d in array.shape:
        dims.add().size = d
    if enum == types_pb2.DT_STRING:
        flat = array.ravel().tolist()
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return
    if as_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
        return
    field = _DTYPES[enum][1]
    if enum == types_pb2.DT_HALF:
        getattr(proto, field).extend(array.ravel().view(np.uint16).tolist())
    else:
        getattr(proto, field).extend(array.ravel().tolist())


def make_proto(array: np.ndarray, as_content: bool = False) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    fill_proto(proto, np.asarray(array), as_content)
    return proto
