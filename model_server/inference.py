"""Predict, Classify, Regress and MultiInference on a loaded servable.

Shared by the gRPC service and by warm-up replay (which runs the same requests against a
version that is still loading). Checks follow TF Serving's order and wording: signature,
input set, dtypes, then the run; nothing is coerced.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from model_server.errors import ServingError, invalid
from model_server.limits import DEFAULT_LIMITS, RequestLimits
from model_server.servable import DEFAULT_SIGNATURE, LoadedModel, Signature
from model_server.tensors import decoded_bytes, dtype_name, fill_proto, proto_shape, to_numpy


def _set_names(names) -> str:
    return ",".join(sorted(names))


def check_input_names(sig: Signature, sent) -> None:
    sent = set(sent)
    expected = set(sig.inputs)
    if sent == expected:
        return
    if len(sent) != len(expected):
        raise invalid(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_set_names(sent)}}}) != len({{{_set_names(expected)}}}). "
            f"Sent extra: {{{_set_names(sent - expected)}}}. "
            f"Missing but required: {{{_set_names(expected - sent)}}}."
        )
    missing = sorted(expected - sent)[0]
    raise invalid(
        f"Signature input alias: {missing}(feed name: {sig.sig_def.inputs[missing].name}) "
        f"not found in request and no default value provided. Sent: {{{_set_names(sent)}}}"
    )


def check_output_filter(sig: Signature, output_filter) -> tuple[str, ...] | None:
    if not output_filter:
        return None
    seen = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{_set_names(sig.outputs)}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return tuple(output_filter)


def decode_inputs(sig: Signature, tensors, limits: RequestLimits = DEFAULT_LIMITS
                  ) -> dict[str, np.ndarray]:
    """TensorProtos -> numpy, with TF Serving's dtype rule (no casts); each declared shape
    is checked against the signature and the request limits before it is allocated."""
    check_input_names(sig, tensors.keys())
    budget = limits.budget()
    inputs = {}
    for alias in sig.input_names:
        proto = tensors[alias]
        expected = sig.inputs[alias]
        if proto.dtype != expected:
            raise invalid(
                f"Expects arg[{sig.input_index[alias]}] to be {dtype_name(expected)} but "
                f"{dtype_name(proto.dtype)} is provided"
            )
        shape = proto_shape(proto)
        itemsize, extra = decoded_bytes(proto)
        budget.admit(sig, alias, shape, itemsize, extra)
        inputs[alias] = to_numpy(proto, shape)
        sig.check_shape(alias, shape)
    return inputs


def echo_spec(spec, request_spec, version: int, signature_name: str | None) -> None:
    """Fill a response ModelSpec: request name, served version, resolved signature."""
    spec.name = request_spec.name
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name


def predict(loaded: LoadedModel, request: predict_pb2.PredictRequest,
            as_content: bool = False, timeout: float | None = None,
            limits: RequestLimits = DEFAULT_LIMITS) -> predict_pb2.PredictResponse:
    sig = loaded.signature(request.model_spec.signature_name, grpc=True)
    output_filter = check_output_filter(sig, request.output_filter)
    inputs = decode_inputs(sig, request.inputs, limits)
    outputs = sig.run(inputs, output_filter, timeout)
    response = predict_pb2.PredictResponse()
    echo_spec(response.model_spec, request.model_spec, loaded.version, sig.name)
    for alias, array in outputs.items():
        fill_proto(response.outputs[alias], array, as_content)
    return response


# ---------------------------------------------------------------- classify / regress

def serialized_examples(input_proto, limits: RequestLimits = DEFAULT_LIMITS) -> np.ndarray:
    """tensorflow.serving.Input -> 1-D object array of serialized tf.Examples (at most
    `limits.max_candidates` of them, within the request's byte limit)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples, ctx = input_proto.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = input_proto.example_list_with_context.examples
        ctx = input_proto.example_list_with_context.context.SerializeToString()
    else:
        raise invalid("Input is empty.")
    if not examples:
        raise invalid("Input is empty.")
    # the context is copied into every example: count it before building anything
    limits.budget().admit_examples(
        len(examples), len(examples) * len(ctx) + sum(ex.ByteSize() for ex in examples))
    data = [ctx + ex.SerializeToString() for ex in examples]
    out = np.empty(len(data), dtype=object)
    out[:] = data
    return out


# method -> (input alias, output aliases of which one must exist, output-count check)
_EXAMPLE_SHAPES = {
    "classify": ("classification", ("classes", "scores"), (1, 2)),
    "regress": ("regression", ("outputs",), (1,)),
}


def _example_signature(loaded: LoadedModel, name: str, method: str) -> Signature:
    """The signature, checked as TF Serving's PreProcessClassification/Regression do (with
    --enable_signature_method_name_check off, its default): structure, not method_name."""
    sig = loaded.signatures.get(name or DEFAULT_SIGNATURE)
    if sig is None:
        raise invalid(f"No signature was found with the name: {name or DEFAULT_SIGNATURE}")
    kind, output_aliases, output_counts = _EXAMPLE_SHAPES[method]
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(sig.outputs) not in output_counts:
        raise invalid("Expected one output Tensor." if method == "regress" else
                      f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if "inputs" not in sig.inputs:
        raise invalid(f"No {kind} inputs found in SignatureDef: {sig.sig_def}")
    if not any(alias in sig.outputs for alias in output_aliases):
        raise invalid(f"No regression outputs found in SignatureDef: {sig.sig_def}"
                      if method == "regress" else
                      'Expected classification signature outputs to contain at least one of '
                      f'"classes" or "scores". Signature was: {sig.sig_def}')
    if sig.inputs["inputs"] != types_pb2.DT_STRING:
        raise invalid(f"{method.capitalize()} input must be a string tensor of serialized "
                      f"tf.Examples; signature {sig.name} takes "
                      f"{dtype_name(sig.inputs['inputs'])}")
    return sig


def _run_examples(sig: Signature, examples: np.ndarray, timeout) -> dict:
    return sig.run({sig.input_names[0]: examples}, None, timeout)


def regress_result(sig: Signature, examples: np.ndarray, result, timeout=None) -> None:
    values = _run_examples(sig, examples, timeout)["outputs"]
    n = len(examples)
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or "
                      f"[batch_size, 1] but got {list(values.shape)}")
    if values.shape[0] != n:
        raise invalid(f"Input batch size did not match output batch size: {n} vs. "
                      f"{values.shape[0]}")
    if values.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    for v in values.reshape(n).tolist():
        result.regressions.add().value = v


def classify_result(sig: Signature, examples: np.ndarray, result, timeout=None) -> None:
    outputs = _run_examples(sig, examples, timeout)
    n = len(examples)
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    for name, arr in (("classes", classes), ("scores", scores)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got "
                          f"{list(arr.shape)} for output '{name}'")
    k = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        row = result.classifications.add()
        for j in range(k):
            cls = row.classes.add()
            if classes is not None:
                label = classes[i, j]
                cls.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cls.score = float(scores[i, j])


# method -> (response message, result writer, MultiInferenceResponse result field)
_EXAMPLE_METHODS = {
    "classify": (classification_pb2.ClassificationResponse, classify_result,
                 "classification_result"),
    "regress": (regression_pb2.RegressionResponse, regress_result, "regression_result"),
}


def _run_examples_request(method: str, loaded, request, timeout, limits):
    response_type, write_result, _field = _EXAMPLE_METHODS[method]
    sig = _example_signature(loaded, request.model_spec.signature_name, method)
    examples = serialized_examples(request.input, limits)
    response = response_type()
    echo_spec(response.model_spec, request.model_spec, loaded.version, sig.name)
    write_result(sig, examples, response.result, timeout)
    return response


def regress(loaded, request: regression_pb2.RegressionRequest, timeout=None,
            limits: RequestLimits = DEFAULT_LIMITS) -> regression_pb2.RegressionResponse:
    return _run_examples_request("regress", loaded, request, timeout, limits)


def classify(loaded, request: classification_pb2.ClassificationRequest, timeout=None,
             limits: RequestLimits = DEFAULT_LIMITS
             ) -> classification_pb2.ClassificationResponse:
    return _run_examples_request("classify", loaded, request, timeout, limits)


def multi_inference(resolve, request: inference_pb2.MultiInferenceRequest, timeout=None,
                    limits: RequestLimits = DEFAULT_LIMITS):
    """All tasks must name the same model; each runs classify or regress on the input."""
    if not request.tasks:
        raise invalid("MultiInferenceRequest must contain at least one task")
    first = request.tasks[0].model_spec
    seen_signatures = set()
    for task in request.tasks:
        if task.model_spec.name != first.name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model "
                          "name.")
        sig_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if sig_name in seen_signatures:
            raise invalid(f"Duplicate evaluation of signature: {sig_name}")
        seen_signatures.add(sig_name)
        if task.method_name not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
            raise invalid(f"Unsupported signature method_name: {task.method_name}")
    loaded = resolve(first)
    examples = serialized_examples(request.input, limits)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        method = task.method_name.rsplit("/", 1)[1]
        sig = _example_signature(loaded, task.model_spec.signature_name, method)
        _response_type, write_result, field = _EXAMPLE_METHODS[method]
        result = response.results.add()
        echo_spec(result.model_spec, task.model_spec, loaded.version, sig.name)
        write_result(sig, examples, getattr(result, field), timeout)
    return response


__all__ = ["ServingError", "predict", "classify", "regress", "multi_inference", "decode_inputs",
           "check_input_names", "check_output_filter", "serialized_examples", "echo_spec"]
