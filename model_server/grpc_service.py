"""gRPC front end: tensorflow.serving.PredictionService and ModelService.

Servicers are the generated bases from tensorflow-serving-api; each gets the model manager,
the metrics (None when monitoring is off) and the GrpcOptions, never the server itself.
Every handler resolves the servable, runs the shared inference code and turns a failure into
the gRPC status with TF Serving's code and (1024-byte truncated) message.
"""

from __future__ import annotations

import logging
import time

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from model_server import inference
from model_server.admission import Admission
from model_server.errors import CODE_NUMBERS, ServingError, from_tf_exception, invalid
from model_server.options import GrpcOptions
from model_server.status import model_status_response

log = logging.getLogger("model_server")


def _as_status(exc: Exception, api: str) -> ServingError:
    """The status a failed call answers with; unexpected exceptions are logged."""
    if isinstance(exc, ServingError):
        return exc
    log.exception("%s failed", api)
    return from_tf_exception(exc)


def _abort(context, error: ServingError):
    context.abort(error.grpc_code, error.grpc_details())


def _answer(context, api: str, handler, *args):
    """`handler(*args)`, or the RPC aborted with the status of its failure."""
    try:
        return handler(*args)
    except Exception as exc:  # noqa: BLE001 - never let a request kill the server
        _abort(context, _as_status(exc, api))


def _timeout(context):
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e8 else None


def _model_spec(request):
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    return request.model_spec


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics, options: GrpcOptions, admission: Admission):
        self.manager = manager
        self.metrics = metrics
        self.admission = admission
        self.tensor_content = options.tensor_content
        self.limits = options.limits

    def _call(self, api: str, request, context, run):
        """Resolve the model, take one of its slots, `run(loaded, request, timeout)`, and
        count the request."""
        started = time.monotonic()
        name = request.model_spec.name if request.HasField("model_spec") else ""
        status = "OK"
        try:
            loaded = self.manager.resolve_spec(_model_spec(request))
            with self.admission.slot(name, _timeout(context)):
                return run(loaded, request, _timeout(context))
        except Exception as exc:  # noqa: BLE001 - never let a request kill the server
            error = _as_status(exc, api)
            status = error.code
            _abort(context, error)
        finally:
            if self.metrics is not None:
                self.metrics.request(name, status)
                if status == "OK":
                    micros = (time.monotonic() - started) * 1e6
                    self.metrics.latency(name, api, "GRPC", micros)
                    self.metrics.runtime(name, api, micros)

    def Predict(self, request, context):
        return self._call("Predict", request, context, lambda m, r, t: inference.predict(
            m, r, self.tensor_content, t, self.limits))

    def Classify(self, request, context):
        return self._call("Classify", request, context,
                          lambda m, r, t: inference.classify(m, r, t, self.limits))

    def Regress(self, request, context):
        return self._call("Regress", request, context,
                          lambda m, r, t: inference.regress(m, r, t, self.limits))

    def MultiInference(self, request, context):
        return _answer(context, "MultiInference", self._multi_inference, request, context)

    def _multi_inference(self, request, context):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        with self.admission.slot(name, _timeout(context)):
            return inference.multi_inference(self.manager.resolve_spec, request,
                                             _timeout(context), self.limits)

    def GetModelMetadata(self, request, context):
        return _answer(context, "GetModelMetadata", self._metadata, request)

    def _metadata(self, request):
        spec = _model_spec(request)
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        loaded = self.manager.resolve_spec(spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(loaded.signature_def_map())
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest through `reload_config(config)`."""

    def __init__(self, manager, metrics, reload_config):
        self.manager = manager
        self.metrics = metrics
        self.reload_config = reload_config

    def GetModelStatus(self, request, context):
        return _answer(context, "GetModelStatus", self._status, request)

    def _status(self, request):
        spec = _model_spec(request)
        version = spec.version.value if spec.HasField("version") else None
        return model_status_response(self.manager.status(spec.name, version))

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        metrics = self.metrics
        before = {n: metrics.counter_value(n) for n in request.metric_names} if metrics else {}
        error = None
        try:
            self.reload_config(request.config)
        except ServingError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - reported in the response
            log.exception("config reload failed")
            error = ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")
        response.status.error_code = CODE_NUMBERS[error.code if error else "OK"]
        response.status.error_message = error.message if error else ""
        for name, value in before.items():
            metric = response.metric.add()
            metric.name = name
            metric.int64_value_increase = int(metrics.counter_value(name) - value)
        if error is not None:
            context.set_code(error.grpc_code)
            context.set_details(error.grpc_details())
        return response


def add_services(grpc_server: grpc.Server, manager, metrics, options: GrpcOptions,
                 reload_config, admission: Admission) -> None:
    """Register PredictionService and ModelService on `grpc_server`."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, metrics, options, admission), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(manager, metrics, reload_config), grpc_server)
