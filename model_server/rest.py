"""REST front end on the stdlib HTTP server, with TF Serving's routes and error mapping.

Paths, check order and error bodies follow TF Serving (docs/model_server.md, 'REST API'):
`/v1/...` answers JSON (errors as `{"error": msg}` with the HTTP status of the canonical
code), the Prometheus page lives on its configured path, and everything else is an HTML 404
like libevent's. The API gets the model manager, the metrics and the RestOptions; the HTTP
transport (bounded threads, timeouts, body limits) is model_server.http_server.
"""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, regression_pb2

from model_server import inference, rest_json
from model_server.admission import Admission
from model_server.errors import ServingError, from_tf_exception, invalid
from model_server.http_server import HttpLimits, HttpServer, Request, Response
from model_server.int_ranges import INT64_MAX
from model_server.options import RestOptions
from model_server.readiness import Readiness
from model_server.status import model_status_response

log = logging.getLogger("model_server")

_V1 = re.compile(r"^/v1/", re.I)
_POST = re.compile(
    r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:([A-Za-z]+)$", re.I)
_GET = re.compile(
    r"^/v1/models(?:/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/[A-Za-z]+)?)?$", re.I)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HTML_404 = (b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>"
             b"<h1>Not Found</h1><p>The requested URL was not found on this server.</p>"
             b"</body></html>")
# :classify and :regress: the request message, the inference call, the response writer
_EXAMPLE_APIS = {
    "classify": (classification_pb2.ClassificationRequest, inference.classify,
                 rest_json.classification_text),
    "regress": (regression_pb2.RegressionRequest, inference.regress, rest_json.regression_text),
}


class _EmptyBody400(Exception):
    """URL conversion failures: TF Serving answers 400 with no body."""


def _decode(part: str) -> str:
    if _BAD_ESCAPE.search(part):
        raise _EmptyBody400()
    return unquote(part, errors="strict")


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    value = int(text)
    if value > INT64_MAX:
        raise _EmptyBody400()
    return value


class RestApi:
    """Request handling, independent of the HTTP transport (easy to test and reuse)."""

    def __init__(self, manager, metrics, options: RestOptions, admission: Admission,
                 readiness: Readiness):
        self.manager = manager
        self.metrics = metrics
        self.admission = admission
        self.readiness = readiness
        self.timeout_s = options.timeout_s
        self.limits = options.limits

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        started = time.monotonic()
        model, api, status = "", "", "OK"
        try:
            if method == "POST":
                match = _POST.match(path)
                if not match or match.group(4) not in ("predict", "classify", "regress"):
                    raise invalid(f"Malformed request: POST {path}")
                model = _decode(match.group(1))
                version = _version(match.group(2))
                label = _decode(match.group(3)) if match.group(3) else None
                api = match.group(4)
                text = self._post(api, model, version, label, body)
            elif method == "GET":
                match = _GET.match(path)
                if not match:
                    raise invalid(f"Malformed request: GET {path}")
                if match.group(1) is None:
                    raise invalid("Missing model name in request.")
                model = _decode(match.group(1))
                version = _version(match.group(2))
                label = _decode(match.group(3)) if match.group(3) else None
                suffix = match.group(4)
                if suffix is not None and suffix.lower() != "/metadata":
                    raise invalid(f"Malformed request: GET {path}")
                if suffix == "/metadata":
                    text = self._metadata(model, version, label)
                else:  # "/METADATA" etc. fall back to status, as in TF Serving
                    text = self._status(model, version)
            else:
                raise invalid(f"Malformed request: {method} {path}")
            return 200, text.encode("utf-8", "surrogateescape")
        except _EmptyBody400:
            status = "INVALID_ARGUMENT"
            return 400, b""
        except ServingError as exc:
            status = exc.code
            return exc.http_status, json.dumps({"error": exc.message}).encode()
        except Exception as exc:  # noqa: BLE001 - a request must never kill the server
            err = from_tf_exception(exc)
            status = err.code
            if err.code == "INTERNAL":
                log.exception("REST %s %s failed", method, path)
            return err.http_status, json.dumps({"error": err.message}).encode()
        finally:
            if self.metrics is not None:
                self.metrics.request(model, status)
                if status == "OK":
                    self.metrics.latency(model, api, "REST", (time.monotonic() - started) * 1e6)

    # ------------------------------------------------------------------ endpoints
    def _status(self, model: str, version: int | None) -> str:
        if self.readiness.draining:  # readiness probes read this page: fail them now
            raise ServingError("UNAVAILABLE", "the server is shutting down")
        response = model_status_response(self.manager.status(model, version))
        return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True, indent=None)

    def _metadata(self, model, version, label) -> str:
        loaded = self.manager.resolve(model, version=version, label=label)
        spec = json.dumps({"name": model, "signature_name": "", "version": str(loaded.version)})
        return ('{"model_spec": ' + spec + ', "metadata": {"signature_def": '
                + loaded.metadata_json() + "}}")

    def _post(self, api, model, version, label, body: bytes) -> str:
        request = rest_json.parse_body(body)
        sig_name = request.get("signature_name", "")
        if not isinstance(sig_name, str):
            raise invalid("'signature_name' key must be a string value.")
        loaded = self.manager.resolve(model, version=version, label=label)
        with self.admission.slot(model, self.timeout_s):
            if api == "predict":
                return self._predict(loaded, sig_name, request)
            return self._classify_regress(api, loaded, model, sig_name, request)

    def _predict(self, loaded, sig_name, request) -> str:
        sig = loaded.signature(sig_name, grpc=False)
        inputs, row_format = rest_json.request_inputs(request, sig, self.limits)
        started = time.monotonic()
        outputs = sig.run(inputs, None, self.timeout_s)
        self._check_deadline(started)
        return rest_json.response_text(outputs, row_format)

    def _classify_regress(self, api, loaded, model, sig_name, request) -> str:
        request_type, run, write = _EXAMPLE_APIS[api]
        req = request_type()
        req.input.CopyFrom(rest_json.examples_input(request, api, self.limits))
        req.model_spec.name = model
        req.model_spec.signature_name = sig_name
        started = time.monotonic()
        result = run(loaded, req, self.timeout_s, self.limits).result
        self._check_deadline(started)
        return write(result)

    def _check_deadline(self, started: float) -> None:
        # A graph call cannot be interrupted from Python; an over-deadline result is
        # discarded and reported as TF Serving would (504).
        if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
            raise ServingError("DEADLINE_EXCEEDED",
                               f"Timed out after {self.timeout_s * 1000:.0f} ms "
                               f"(--rest_api_timeout_in_ms)")


_CORS_HEADERS = (("Access-Control-Allow-Origin", "*"),
                 ("Access-Control-Allow-Methods", "POST, GET"),
                 ("Access-Control-Allow-Headers", "Content-Type"))


class RestRouter:
    """What TF Serving's HTTP server does with a complete request: `/v1` to the API, the
    Prometheus page, CORS preflights, and libevent's HTML 404 for everything else."""

    def __init__(self, api: RestApi, metrics, prometheus_path: str | None, cors: bool):
        self.api = api
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self.cors_headers = _CORS_HEADERS if cors else ()

    def respond(self, request: Request) -> Response:
        method, path = request.method, request.target
        if method == "OPTIONS":
            origin = request.headers.get("origin", "")
            return Response(200 if re.match(r"^https?://", origin) else 400,
                            headers=self.cors_headers)
        if _V1.match(path):
            code, payload = self.api.handle(method, path,
                                            request.body if method == "POST" else b"")
            return Response(code, payload, headers=self.cors_headers)
        if self.prometheus_path is not None and path.split("?", 1)[0] == self.prometheus_path:
            if "?" in path:
                return Response(400, b"Unexpected path", "text/plain")
            return Response(200, self.metrics.render(), "text/plain; version=0.0.4")
        return Response(404, _HTML_404, "text/html")


class RestServer(HttpServer):
    """The REST front end: RestRouter behind the bounded HTTP server."""

    def __init__(self, options: RestOptions, manager, metrics, prometheus_path: str | None,
                 admission: Admission, readiness: Readiness):
        router = RestRouter(RestApi(manager, metrics, options, admission, readiness), metrics,
                            prometheus_path, options.cors)
        super().__init__((options.bind_address, options.port), router.respond, HttpLimits(
            num_threads=options.num_threads, max_connections=options.max_connections,
            max_body_bytes=options.max_body_bytes, header_timeout_s=options.header_timeout_s,
            body_timeout_s=options.body_timeout_s))
