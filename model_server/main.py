"""Entry point: flags, logging, start, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys

from model_server import flags as flag_defs


def main(argv: list[str] | None = None) -> int:
    args = flag_defs.parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s.%(msecs)03d %(levelname).1s model_server] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    from model_server.errors import StartupError
    from model_server.options import ServerOptions
    from model_server.server import VERSION, ModelServer

    if args.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: {VERSION}")
        print(f"TensorFlow Library: {tf.__version__}")
        return 0
    try:
        server = ModelServer(ServerOptions.from_flags(args))
        server.start()
    except StartupError as exc:
        print(f"Failed to start server. Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

    def _stop(signum, _frame):
        logging.getLogger("model_server").info("signal %d: shutting down", signum)
        server.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait()
    server.stop()
    return 0
