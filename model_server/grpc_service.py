"""gRPC front end: tensorflow.serving.PredictionService and ModelService.

Servicers are the generated bases from tensorflow-serving-api; every handler resolves the
servable, runs the shared inference code and turns a ServingError into the gRPC status with
TF Serving's code and (1024-byte truncated) message.
"""

from __future__ import annotations

import logging
import time

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from model_server import inference
from model_server.errors import CODE_NUMBERS, ServingError, from_tf_exception, invalid

log = logging.getLogger("model_server")


def _abort(context, exc: ServingError):
    context.abort(exc.grpc_code, exc.grpc_details())


def _timeout(context):
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e8 else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server):
        self.server = server
        self.manager = server.manager
        self.metrics = server.metrics
        self.as_content = server.flags.enable_serialization_as_tensor_content

    def _call(self, api: str, request, context, fn):
        started = time.monotonic()
        name = request.model_spec.name if request.HasField("model_spec") else ""
        status = "OK"
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            loaded = self.manager.resolve_spec(request.model_spec)
            return fn(loaded, request, _timeout(context))
        except ServingError as exc:
            status = exc.code
            _abort(context, exc)
        except Exception as exc:  # noqa: BLE001 - never let a request kill the server
            err = from_tf_exception(exc)
            status = err.code
            log.exception("%s failed", api)
            _abort(context, err)
        finally:
            if self.metrics is not None:
                self.metrics.request(name, status)
                if status == "OK":
                    micros = (time.monotonic() - started) * 1e6
                    self.metrics.latency(name, api, "GRPC", micros)
                    self.metrics.runtime(name, api, micros)

    def Predict(self, request, context):
        return self._call("Predict", request, context,
                          lambda m, r, t: inference.predict(m, r, self.as_content, t))

    def Classify(self, request, context):
        return self._call("Classify", request, context, inference.classify)

    def Regress(self, request, context):
        return self._call("Regress", request, context, inference.regress)

    def MultiInference(self, request, context):
        try:
            return inference.multi_inference(self.manager.resolve_spec, request,
                                             _timeout(context))
        except ServingError as exc:
            _abort(context, exc)
        except Exception as exc:  # noqa: BLE001
            _abort(context, from_tf_exception(exc))

    def GetModelMetadata(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one "
                              "metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid(f"Metadata field {field} is not supported")
            loaded = self.manager.resolve_spec(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = loaded.version
            response.metadata["signature_def"].Pack(loaded.signature_def_map())
            return response
        except ServingError as exc:
            _abort(context, exc)


def fill_status(response, statuses) -> None:
    for st in statuses:
        item = response.model_version_status.add()
        item.version = st.version
        item.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
        item.status.error_code = CODE_NUMBERS[st.error_code]
        item.status.error_message = st.error_message


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server):
        self.server = server
        self.manager = server.manager

    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            fill_status(response, self.manager.status(spec.name, version))
            return response
        except ServingError as exc:
            _abort(context, exc)

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        metrics = self.server.metrics
        before = {n: metrics.counter_value(n) for n in request.metric_names} if metrics else {}
        try:
            self.server.reload_config(request.config)
            code, message = "OK", ""
        except ServingError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # noqa: BLE001
            log.exception("config reload failed")
            code, message = "INTERNAL", f"{type(exc).__name__}: {exc}"
        response.status.error_code = CODE_NUMBERS[code]
        response.status.error_message = message
        for name, value in before.items():
            metric = response.metric.add()
            metric.name = name
            metric.int64_value_increase = int(metrics.counter_value(name) - value)
        if code != "OK":
            context.set_code(ServingError(code, message).grpc_code)
            context.set_details(ServingError(code, message).grpc_details())
        return response


def add_services(grpc_server: grpc.Server, server) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(server), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(server), grpc_server)
