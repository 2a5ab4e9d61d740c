"""gRPC API with the tensorflow-serving-api stubs against a real server
(docs/model_server.md, 'gRPC API')."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)


def predict_request(model="versioned", x=(1.0, 2.0), **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    if x is not None:
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code(), info.value.details()


def test_predict_echoes_resolved_spec_and_uses_typed_fields(predict_stub):
    response = predict_stub.Predict(predict_request())
    assert response.model_spec.name == "versioned"
    assert response.model_spec.version.value == 3
    assert response.model_spec.signature_name == "serving_default"
    y = response.outputs["y"]
    assert list(y.float_val) == [3.0, 6.0] and not y.tensor_content
    assert [d.size for d in y.tensor_shape.dim] == [2]
    labelled = predict_stub.Predict(predict_request(version_label="stable"))
    assert labelled.model_spec.version.value == 1 and not labelled.model_spec.version_label
    assert tf.make_ndarray(labelled.outputs["y"]).tolist() == [1.0, 2.0]
    pinned = predict_stub.Predict(predict_request(version=2))
    assert list(pinned.outputs["y"].float_val) == [2.0, 4.0]


def test_typed_field_inputs_repeat_last_value(predict_stub):
    request = predict_request(x=None, version=1)
    tensor = request.inputs["x"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.add().size = 4
    tensor.float_val.extend([1.0, 5.0])
    assert list(predict_stub.Predict(request).outputs["y"].float_val) == [1.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize(("spec", "code", "message"), [
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ({"version": 9}, grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(versioned, 9)"),
    ({"version_label": "beta"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: beta"),
    ({"signature_name": "nope"}, grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
])
def test_resolution_errors(predict_stub, spec, code, message):
    assert rpc_error(predict_stub.Predict, predict_request(**spec)) == (code, message)


def test_missing_model_spec(predict_stub, model_stub):
    assert rpc_error(predict_stub.Predict, predict_pb2.PredictRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    assert rpc_error(model_stub.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_bad_tensors(predict_stub):
    wrong_dtype = predict_request()
    wrong_dtype.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float64)))
    assert rpc_error(predict_stub.Predict, wrong_dtype) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but double is provided")
    missing = predict_request(x=None)
    code, message = rpc_error(predict_stub.Predict, missing)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("input size does not match signature: 0!=1")
    extra = predict_request()
    extra.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    code, message = rpc_error(predict_stub.Predict, extra)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {z}" in message
    renamed = predict_request(x=None)
    renamed.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    code, message = rpc_error(predict_stub.Predict, renamed)
    assert message.startswith("Signature input alias: x(feed name: serving_default_x:0) not "
                              "found in request")
    bad_shape = predict_request(x=[[1.0, 2.0]])
    code, message = rpc_error(predict_stub.Predict, bad_shape)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "has shape [1, 2]" in message
    corrupt = predict_request()
    corrupt.inputs["x"].tensor_content = b"\x00\x00"
    code, message = rpc_error(predict_stub.Predict, corrupt)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tensor_content" in message
    # the server is still fine
    assert predict_stub.Predict(predict_request()).model_spec.version.value == 3


def test_output_filter(predict_stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multiout"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((2, 2), np.float32)))
    assert set(predict_stub.Predict(request).outputs) == {"total", "doubled", "count"}
    request.output_filter.append("total")
    response = predict_stub.Predict(request)
    assert set(response.outputs) == {"total"} and list(response.outputs["total"].float_val) == [
        2.0, 2.0]
    request.output_filter.append("total")
    assert rpc_error(predict_stub.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: total")
    del request.output_filter[:]
    request.output_filter.append("nope")
    code, message = rpc_error(predict_stub.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == ("output tensor alias not found in signature: nope Outputs expected to be "
                       "in the set {count,doubled,total}.")


def test_strings_and_ints(predict_stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "strings"
    request.inputs["s"].CopyFrom(tf.make_tensor_proto([b"ab", b"\xff\x00c"]))
    response = predict_stub.Predict(request)
    assert list(response.outputs["length"].int_val) == [2, 3]
    assert list(response.outputs["upper_bytes"].string_val) == [b"AB", b"\xff\x00C"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "ints"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([2**40], np.int64)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto(np.array([1], np.int32)))
    request.inputs["flag"].CopyFrom(tf.make_tensor_proto(np.array([False])))
    assert list(predict_stub.Predict(request).outputs["sum"].int64_val) == [-(2**40) - 1]


def test_large_message_over_4mib(predict_stub):
    x = np.arange(2_000_000, dtype=np.float32)  # 8 MB in, 8 MB out
    response = predict_stub.Predict(predict_request(x=x, version=1))
    assert response.outputs["y"].tensor_shape.dim[0].size == 2_000_000
    assert response.outputs["y"].float_val[-1] == 1_999_999.0


def test_metadata(predict_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "versioned"
    request.model_spec.version_label = "canary"
    assert rpc_error(predict_stub.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field")
    request.metadata_field.append("signature_def")
    response = predict_stub.GetModelMetadata(request)
    assert response.model_spec.name == "versioned" and response.model_spec.version.value == 2
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    assert sig_map.signature_def["serving_default"].inputs["x"].name == "serving_default_x:0"
    request.metadata_field.append("other")
    assert rpc_error(predict_stub.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Metadata field other is not supported")


def test_model_status(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "versioned"
    response = model_stub.GetModelStatus(request)
    assert [s.version for s in response.model_version_status] == [3, 2, 1]
    assert all(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
               for s in response.model_version_status)
    request.model_spec.version.value = 5
    assert rpc_error(model_stub.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 5 of model versioned")
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = ""
    assert rpc_error(model_stub.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND, "Could not find any versions of model ")


def _examples(values, target):
    for value in values:
        example = target.examples.add()
        example.features.feature["x"].float_list.value.append(value)


def test_classify_regress_multi_inference(predict_stub):
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "multi"
    regress.model_spec.signature_name = "regress"
    _examples([1.0, 2.5], regress.input.example_list)
    response = predict_stub.Regress(regress)
    assert [r.value for r in response.result.regressions] == [2.0, 5.0]
    assert response.model_spec.version.value == 1

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "multi"
    classify.model_spec.signature_name = "classify"
    context = example_pb2.Example()
    context.features.feature["x"].float_list.value.append(0.75)
    classify.input.example_list_with_context.context.CopyFrom(context)
    classify.input.example_list_with_context.examples.add()
    result = predict_stub.Classify(classify).result.classifications[0]
    assert [(c.label, c.score) for c in result.classes] == [("pos", 0.75), ("neg", 0.25)]

    empty = regression_pb2.RegressionRequest()
    empty.model_spec.name = "multi"
    empty.model_spec.signature_name = "regress"
    assert rpc_error(predict_stub.Regress, empty) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                      "Input is empty.")
    wrong = regression_pb2.RegressionRequest()
    wrong.CopyFrom(regress)
    wrong.model_spec.signature_name = "serving_default"
    code, _ = rpc_error(predict_stub.Regress, wrong)
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    multi = inference_pb2.MultiInferenceRequest()
    for sig, method in (("regress", "regress"), ("classify", "classify")):
        task = multi.tasks.add()
        task.model_spec.name = "multi"
        task.model_spec.signature_name = sig
        task.method_name = f"tensorflow/serving/{method}"
    _examples([0.5], multi.input.example_list)
    results = predict_stub.MultiInference(multi).results
    assert results[0].regression_result.regressions[0].value == 1.0
    assert results[1].classification_result.classifications[0].classes[0].score == 0.5
    multi.tasks[1].model_spec.name = "other"
    code, message = rpc_error(predict_stub.MultiInference, multi)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "same model name" in message


def test_keras_model_over_grpc(predict_stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 3), np.float32)))
    response = predict_stub.Predict(request)
    (name,) = response.outputs
    assert tf.make_ndarray(response.outputs[name]).tolist() == [[3.0]]


# ------------------------------------------------------------ conformance gaps (issue 16)
def test_scalar_outputs_have_an_empty_tensor_shape(predict_stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "scalar"
    request.inputs["s"].CopyFrom(tf.make_tensor_proto(b"abc"))
    response = predict_stub.Predict(request)
    for alias in ("length", "text"):
        assert response.outputs[alias].HasField("tensor_shape")
        assert not response.outputs[alias].tensor_shape.dim
    assert list(response.outputs["length"].int_val) == [3]


def test_regress_on_a_signature_without_regression_inputs(predict_stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "not_regression"
    request.input.example_list.examples.add()
    code, details = rpc_error(predict_stub.Regress, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("No regression inputs found in SignatureDef: ")
    assert 'method_name: "tensorflow/serving/predict"' in details


def test_xla_model_needs_xla_cpu_compilation_enabled(server_models, model_server_factory):
    """As in TF Serving: an XLA-compiled model fails with a clear status unless
    --xla_cpu_compilation_enabled=true."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "xla_head"
    request.inputs["state"].CopyFrom(tf.make_tensor_proto(np.ones((1, 8), np.float32)))
    ids = tf.make_tensor_proto(np.array([[1, 2]], np.int64))
    request.inputs["cand_item_ids"].CopyFrom(ids)
    request.inputs["cand_cate_ids"].CopyFrom(ids)
    # the harness turns XLA on unless told (the project's exports need it); TF Serving's
    # default, like this server's own, is off
    off = model_server_factory({"xla_head": server_models["xla_head"]},
                               ["--xla_cpu_compilation_enabled=false"])
    on = model_server_factory({"xla_head": server_models["xla_head"]},
                              ["--xla_cpu_compilation_enabled=true"])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(off.grpc_target))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--xla_cpu_compilation_enabled=true" in refused.value.details()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(on.grpc_target))
    assert tf.make_ndarray(stub.Predict(request, timeout=30).outputs["ctr"]).shape == (1, 2)
