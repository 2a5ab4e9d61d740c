"""What the embedded model server adds to one gRPC Predict call, on a trivial model.

A SavedModel computing `y = x + 1` (so model compute is next to nothing) is served by the
embedded server in a child process (`ModelServerProcess`); sequential Predict calls are
timed against calling the same loaded signature in this process. The difference is the
server's request path: client stub, loopback gRPC, decoding, admission, graph call, encoding.
A bare gRPC server answering a fixed response (`--floor`) shows how much of that the Python
gRPC stack costs before the server does anything.

    python -m bench.server_overhead [--calls N] [--floor] [--profile out.prof]

`--profile` runs the server in this process instead (ModelServer built from flags) under
cProfile while a client thread sends the calls, and prints the top entries of the server's
request path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.latency import percentiles_ms
from bench.server import closed_loop, export_trivial, grpc_request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INPUT = np.arange(8, dtype=np.float32)


def in_process_call(model_path: Path):
    """The graph called in this process, as a client of TF would call it."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_path / "1")).signatures["serving_default"]
    return lambda: fn(x=tf.constant(INPUT))["y"].numpy()


def _stub(target: str):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _row(name: str, samples: list[float], base: dict | None) -> dict:
    stats = percentiles_ms(samples)
    row = {"bench": name, "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}
    if base is not None:
        row["added_p50_ms"] = round(stats["p50_ms"] - base["p50_ms"], 3)
        row["added_p99_ms"] = round(stats["p99_ms"] - base["p99_ms"], 3)
    return row


def measure(calls: int, floor: bool, server_args: list[str]) -> list[dict]:
    from devkit.model_server_process import ModelServerProcess

    root = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    rows = []
    try:
        model = export_trivial(root)
        local = in_process_call(model)
        args = [f"--model_base_path={model}", "--model_name=trivial", "--rest_api_port=0",
                *server_args]
        with ModelServerProcess(args) as server:
            channel, stub = _stub(server.grpc_target)
            request = grpc_request("trivial", {"x": INPUT})
            local_samples = closed_loop(local, calls)[0]
            base = percentiles_ms(local_samples)
            rows.append(_row("in_process_graph_call", local_samples, None))
            rows.append(_row("grpc_predict_deadline_10s", closed_loop(
                lambda: stub.Predict(request, timeout=10), calls)[0], base))
            rows.append(_row("grpc_predict_no_deadline", closed_loop(
                lambda: stub.Predict(request), calls)[0], base))
            channel.close()
        if floor:
            rows.append(_floor_row(calls, request, base))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _floor_row(calls: int, request, base: dict) -> dict:
    """A bare gRPC server in a child process answering every Predict with a fixed
    response: the Python gRPC round trip alone."""
    import subprocess

    from devkit.ports import HOST, free_port

    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "bench.server_overhead", "--serve-floor",
                              str(port)], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        channel, stub = _stub(f"{HOST}:{port}")
        import grpc

        grpc.channel_ready_future(channel).result(timeout=60)
        samples = closed_loop(lambda: stub.Predict(request, timeout=10), calls)[0]
        channel.close()
    finally:
        child.terminate()
        child.wait(10)
    return _row("grpc_floor_fixed_response", samples, base)


def serve_floor(port: int) -> None:
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    response = predict_pb2.PredictResponse()
    response.model_spec.name = "trivial"
    response.outputs["y"].float_val.extend((INPUT + 1).tolist())

    class Fixed(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Fixed(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def profile(calls: int, out: str, server_args: list[str]) -> None:
    """The server in this process, its Predict handler under cProfile (the handler runs on
    gRPC's worker threads, so the profiler is switched on inside each call), driven by one
    client. gRPC's own threads are not covered: `py-spy record --threads -p <server pid>`
    on a `ModelServerProcess` shows those."""
    import cProfile
    import pstats

    from devkit.ports import HOST, free_port
    from model_server import flags
    from model_server.grpc_service import PredictionServicer
    from model_server.options import ServerOptions
    from model_server.server import ModelServer

    profiler = cProfile.Profile()
    handler = PredictionServicer.Predict
    root = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    try:
        model = export_trivial(root)
        port = free_port()
        options = ServerOptions.from_flags(flags.parse([
            f"--port={port}", "--rest_api_port=0", f"--model_base_path={model}",
            "--model_name=trivial", *server_args]))
        PredictionServicer.Predict = lambda self, request, context: profiler.runcall(
            handler, self, request, context)
        server = ModelServer(options).start()
        channel, stub = _stub(f"{HOST}:{port}")
        request = grpc_request("trivial", {"x": INPUT})
        for _ in range(calls):
            stub.Predict(request, timeout=10)
        channel.close()
        server.stop()
    finally:
        PredictionServicer.Predict = handler
        shutil.rmtree(root, ignore_errors=True)
    profiler.dump_stats(out)
    pstats.Stats(out).sort_stats("tottime").print_stats(25)


def _print(rows: list[dict]) -> None:
    keys = ("bench", "p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms")
    print(" | ".join(f"{k:<28}" if k == "bench" else f"{k:>12}" for k in keys))
    for row in rows:
        print(" | ".join(f"{row[k]:<28}" if k == "bench" else f"{str(row.get(k, '')):>12}"
                         for k in keys))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per row")
    parser.add_argument("--floor", action="store_true",
                        help="also time a bare gRPC server with a fixed response")
    parser.add_argument("--profile", metavar="FILE",
                        help="profile an in-process server instead; write pstats to FILE")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra model server flag (repeatable)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
    elif args.profile:
        profile(args.calls, args.profile, args.server_arg)
    else:
        _print(measure(args.calls, args.floor, args.server_arg))


if __name__ == "__main__":
    main()
