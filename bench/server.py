"""Model server benchmark: a DIEN head at 1 and 100 candidates over gRPC and REST, a fixed
500 QPS open-loop run (latency from each request's scheduled send time, every request
counted), and the server's own overhead on a trivial model.

Everything runs side by side in one process tree: this process exports the models, starts
the embedded server as a child process (`ModelServerProcess`) and drives it with the
tensorflow-serving-api stub and plain HTTP. "Overhead" compares a server round trip with
calling the same loaded signature in-process.

    python -m bench.server [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.latency import ABANDONED, ERROR, OK, TIMEOUT, cell_stats, percentiles_ms

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def export_head(root: Path) -> tuple[Path, str, int]:
    """A real DIEN head export (paper-default sizes, untrained), made fresh for each run so
    the figures always describe the current model code."""
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    paths = export_model("dien", root, 1, config=ModelConfig(), parts=("head",))
    target = paths["head"].parent
    source = "tf_models.export.export_model('dien', ModelConfig() defaults, untrained)"
    return target, source, _state_size(target / "1")


def _state_size(version_dir: Path) -> int:
    from uic.contract import ExportMetadata

    return ExportMetadata.read(version_dir).state_size


def export_trivial(root: Path) -> Path:
    import tensorflow as tf

    class Trivial(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x + 1.0}

    module = Trivial()
    path = root / "trivial"
    tf.saved_model.save(module, str(path / "1"), signatures={"serving_default": module.serve})
    return path


def head_inputs(state_size: int, n: int, rng) -> dict[str, np.ndarray]:
    """One user's head request, shaped as the model contract's `head` signature says
    (uic.contract.SIGNATURES), so a contract change reshapes it here too."""
    from uic.contract import SIGNATURES

    dims = {"B": 1, "N": n, "S": state_size}
    out = {}
    for spec in SIGNATURES["head"][0]:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in spec.shape)
        if spec.dtype.startswith("float"):
            out[spec.name] = rng.normal(size=shape).astype(spec.dtype)
        else:
            high = 10**4 if "cate" in spec.name else 10**6
            out[spec.name] = rng.integers(1, high, size=shape).astype(spec.dtype)
    return out


def grpc_request(model: str, inputs: dict):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def closed_loop(call, n: int, warmup: int = 20) -> tuple[list[float], float]:
    for _ in range(warmup):
        call()
    samples = []
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples, n / (time.perf_counter() - started)


def open_loop(stub, request, qps: float, seconds: float, timeout_s: float = 1.0) -> dict:
    """Send at a fixed rate regardless of responses (no coordinated omission); every latency
    runs from the request's scheduled time, and every request is counted (bench.latency)."""
    total = max(1, int(qps * seconds))
    outcomes: list[str | None] = [None] * total
    latencies = [0.0] * total
    done = threading.Event()
    lock = threading.Lock()
    pending = [total]

    def finished(future, i, scheduled_at):
        latency = time.perf_counter() - scheduled_at
        failed = future.exception() is not None
        with lock:
            if outcomes[i] is None:
                outcomes[i] = TIMEOUT if latency > timeout_s else ERROR if failed else OK
                latencies[i] = latency
                pending[0] -= 1
                if pending[0] == 0:
                    done.set()

    start = time.perf_counter() + 0.02
    for i in range(total):
        scheduled_at = start + i / qps
        delay = scheduled_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        remaining = scheduled_at + timeout_s - time.perf_counter()
        if remaining <= 0:  # the sender itself fell a whole timeout behind
            with lock:
                outcomes[i], latencies[i] = TIMEOUT, time.perf_counter() - scheduled_at
                pending[0] -= 1
            continue
        future = stub.Predict.future(request, timeout=remaining)
        future.add_done_callback(lambda f, i=i, at=scheduled_at: finished(f, i, at))
    done.wait(max(0.0, start + total / qps + timeout_s + 0.5 - time.perf_counter()))
    with lock:
        now = time.perf_counter()
        for i in range(total):
            if outcomes[i] is None:
                outcomes[i], latencies[i] = ABANDONED, now - (start + i / qps)
    stats = cell_stats(outcomes, latencies, scheduled=total, window_s=total / qps,
                       timeout_s=timeout_s)
    return {**stats, "ops_per_s": stats["goodput_qps"]}


class Rest:
    def __init__(self, url: str):
        host, port = url.replace("http://", "").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: bytes) -> bytes:
        try:
            self.conn.request("POST", path, body=body,
                              headers={"Content-Type": "application/json"})
            response = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed the idle keep-alive connection (its header timeout is also
            # the keep-alive idle time): reconnect once, as the project's client does
            self.conn.close()
            self.conn.request("POST", path, body=body,
                              headers={"Content-Type": "application/json"})
            response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"REST {response.status}: {data[:200]!r}")
        return data


def rest_body(inputs: dict) -> bytes:
    return json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()


def run(quick: bool = False) -> list[dict]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from devkit.model_server_process import ModelServerProcess
    from model_server.config import write_models_config

    n_requests = 200 if quick else 2000
    open_seconds = 3.0 if quick else 10.0
    rng = np.random.default_rng(0)
    records: list[dict] = []
    root = Path(tempfile.mkdtemp(prefix="bench_server_"))
    try:
        head_path, source, state_size = export_head(root)
        trivial_path = export_trivial(root)
        config = write_models_config(root / "models.config",
                                     {"dien_head": head_path, "trivial": trivial_path})
        with ModelServerProcess([f"--model_config_file={config}"]) as server:
            channel = grpc.insecure_channel(server.grpc_target)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            rest = Rest(server.rest_url)
            for n in (1, 100):
                inputs = head_inputs(state_size, n, rng)
                request = grpc_request("dien_head", inputs)
                samples, rate = closed_loop(lambda r=request: stub.Predict(r, timeout=10),
                                            n_requests)
                records.append({"bench": f"server_head_grpc_n{n}", "candidates": n,
                                **percentiles_ms(samples), "ops_per_s": round(rate, 1),
                                "model": source})
                body = rest_body(inputs)
                samples, rate = closed_loop(
                    lambda b=body: rest.post("/v1/models/dien_head:predict", b), n_requests)
                records.append({"bench": f"server_head_rest_n{n}", "candidates": n,
                                **percentiles_ms(samples), "ops_per_s": round(rate, 1),
                                "model": source})
            # the head alone, called in this process: what the model costs without a server
            head_fn = tf.saved_model.load(str(head_path / "1")).signatures["serving_default"]
            for n in (1, 100):
                inputs = {k: tf.constant(v) for k, v in head_inputs(state_size, n, rng).items()}
                samples, rate = closed_loop(lambda i=inputs: head_fn(**i)["ctr"].numpy(),
                                            n_requests)
                records.append({"bench": f"head_in_process_n{n}", "candidates": n,
                                **percentiles_ms(samples), "ops_per_s": round(rate, 1),
                                "model": source})
            for n in (1, 100):
                request = grpc_request("dien_head", head_inputs(state_size, n, rng))
                records.append({"bench": f"server_head_grpc_n{n}_open_loop_500qps",
                                "candidates": n, "target_qps": 500,
                                **open_loop(stub, request, 500, open_seconds), "model": source})

            # overhead: round trip vs the same signature called in this process
            x = np.arange(8, dtype=np.float32)
            loaded = tf.saved_model.load(str(trivial_path / "1"))
            fn = loaded.signatures["serving_default"]
            in_proc, _ = closed_loop(lambda: fn(x=tf.constant(x))["y"].numpy(), n_requests)
            request = grpc_request("trivial", {"x": x})
            via_grpc, grpc_rate = closed_loop(lambda: stub.Predict(request, timeout=10),
                                              n_requests)
            body = rest_body({"x": x})
            via_rest, rest_rate = closed_loop(
                lambda: rest.post("/v1/models/trivial:predict", body), n_requests)
            base = percentiles_ms(in_proc)
            for name, samples, rate in (("grpc", via_grpc, grpc_rate),
                                        ("rest", via_rest, rest_rate)):
                stats = percentiles_ms(samples)
                records.append({"bench": f"server_overhead_trivial_{name}", **stats,
                                "ops_per_s": round(rate, 1),
                                "in_process_p50_ms": base["p50_ms"],
                                "in_process_p99_ms": base["p99_ms"],
                                "overhead_p50_ms": round(stats["p50_ms"] - base["p50_ms"], 3),
                                "ratio_p50": round(stats["p50_ms"] / base["p50_ms"], 1)})
            channel.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print(records)
    return records


def _print(records: list[dict]) -> None:
    keys = ("bench", "p50_ms", "p99_ms", "ops_per_s", "error_rate", "overhead_p50_ms",
            "ratio_p50")
    print(" | ".join(f"{k:>14}" if k != "bench" else f"{k:<40}" for k in keys))
    for record in records:
        print(" | ".join(f"{str(record.get(k, '')):>14}" if k != "bench" else f"{record[k]:<40}"
                         for k in keys))
    models = {r["model"] for r in records if "model" in r}
    for model in models:
        print(f"head model: {model}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (< 1 min)")
    args = parser.parse_args()
    run(quick=args.quick)


if __name__ == "__main__":
    main()
