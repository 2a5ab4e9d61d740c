"""CLI: score one user against candidates and print a table.

    python -m client score --user 42 --items 1001,1002,1003 --cates 7,7,9
    python -m client score --user 42 --candidates cands.csv --arch A --transport rest \
        --server 127.0.0.1:8501
    python -m client score --user 42 --items 1001 --server models.example:8500 \
        --tls_ca ca.pem --tls_cert client.pem --tls_key client.key
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from client.candidates import MAX_CANDIDATES, parse_id_list, read_candidates
from client.errors import ClientError, InvalidRequest
from client.scorer import ARCHS, FALLBACKS, Scorer, ScoreResult
from client.tls import add_tls_args, tls_from_args
from client.transport import DEFAULT_GRPC_PORT, DEFAULT_REST_PORT, TRANSPORTS
from uic.contract import MODELS
from uic.store import DEFAULT_REDIS_URL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Thin serving client: join the user's interest state in Redis with the "
                    "candidates and call the model head in TF Serving (architecture B), or "
                    "the full model on the raw behaviours (architecture A).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score one user against N candidates",
                       description="Score one user against N candidates and print a table "
                                   "(input order; rank = position by score).")
    p.add_argument("--user", required=True, help="user id (non-negative integer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--items", help="candidate item ids, comma-separated: 1,2,3")
    src.add_argument("--candidates", metavar="FILE",
                     help="candidates file: JSONL ({\"item_id\":1,\"category_id\":7} per line) "
                          "or CSV (item_id,category_id rows, optional header)")
    p.add_argument("--cates", help="category per item, comma-separated (with --items); "
                                   "default 0 = unknown category")
    p.add_argument("--model", default="dien", choices=MODELS, help="model (default dien)")
    p.add_argument("--arch", default="B", choices=ARCHS,
                   help="B: state from Redis + <model>_head (default); "
                        "A: behaviours from Redis + <model>_full")
    p.add_argument("--transport", default="grpc", choices=TRANSPORTS, help="default grpc")
    p.add_argument("--server", default=None, metavar="HOST:PORT",
                   help=f"model server (default 127.0.0.1:{DEFAULT_GRPC_PORT} for grpc, "
                        f"127.0.0.1:{DEFAULT_REST_PORT} for rest)")
    p.add_argument("--redis_url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
                   help=f"interest store (default $REDIS_URL or {DEFAULT_REDIS_URL}, the "
                        "port `make redis-start` uses)")
    p.add_argument("--version", type=int, default=None,
                   help="pin a model version instead of the active pointer")
    p.add_argument("--history_length", type=int, default=100,
                   help="architecture A: behaviours read per request (default 100)")
    p.add_argument("--deadline_ms", type=float, default=2000.0,
                   help="budget for the whole call (default 2000)")
    p.add_argument("--redis_timeout_ms", type=float, default=200.0,
                   help="a slower Redis read counts as Redis down (default 200)")
    p.add_argument("--fallback", default="cold_start", choices=FALLBACKS,
                   help="when Redis is down: cold_start (status degraded, default) or error")
    p.add_argument("--max_candidates", type=int, default=MAX_CANDIDATES,
                   help=f"refuse more candidates than this before sending (default "
                        f"{MAX_CANDIDATES:,}, the model server's --max_request_candidates)")
    tls = p.add_argument_group(
        "TLS to the model server",
        "gRPC over TLS (TF Serving's --ssl_config_file), or HTTPS for REST through a "
        "TLS-terminating proxy. Any of these options turns TLS on; the server's certificate "
        "is always verified.")
    add_tls_args(tls)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def format_table(result: ScoreResult) -> str:
    age = "-" if result.state_age_ms is None else f"{result.state_age_ms / 1000.0:.1f} s"
    events = "-" if result.events_applied is None else str(result.events_applied)
    lines = [
        f"model {result.model} v{result.version}  arch {result.arch} ({result.served_model} "
        f"via {result.transport})  status {result.status.value}  state age {age}  "
        f"events {events}" + (f"  ({result.reason})" if result.reason else ""),
        f"redis {result.redis_ms:.2f} ms  build {result.build_ms:.2f} ms  "
        f"rpc {result.rpc_ms:.2f} ms  total {result.total_ms:.2f} ms",
        f"{'rank':>4}  {'item_id':>12}  {'category_id':>11}  {'score':>10}",
    ]
    order = (-result.scores).argsort(kind="stable")
    rank = {int(i): r + 1 for r, i in enumerate(order)}
    for i, (item, cate, score) in enumerate(zip(result.item_ids, result.cate_ids, result.scores,
                                                strict=True)):
        lines.append(f"{rank[i]:>4}  {int(item):>12}  {int(cate):>11}  {float(score):>10.6f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        user = args.user.strip()
        if not user.isdecimal():
            raise InvalidRequest(f"--user must be a non-negative integer id, got {args.user!r}")
        if args.items is not None:
            items = parse_id_list(args.items, "--items")
            cates = None
            if args.cates is not None:
                cates = parse_id_list(args.cates, "--cates")
                if cates.size != items.size:
                    raise InvalidRequest(f"--items has {items.size} ids but --cates has "
                                         f"{cates.size}: give one category per item")
        else:
            if args.cates is not None:
                raise InvalidRequest("--cates goes with --items; a --candidates file carries "
                                     "its own category_id column")
            items, cates = read_candidates(args.candidates)
        server = args.server or (f"127.0.0.1:{DEFAULT_GRPC_PORT}" if args.transport == "grpc"
                                 else f"127.0.0.1:{DEFAULT_REST_PORT}")
        with Scorer(args.model, redis_url=args.redis_url, server=server,
                    transport=args.transport, arch=args.arch, version=args.version,
                    deadline_ms=args.deadline_ms, redis_timeout_ms=args.redis_timeout_ms,
                    history_length=args.history_length, fallback=args.fallback,
                    tls=tls_from_args(args), max_candidates=args.max_candidates) as scorer:
            result = scorer.score(int(user), items, cates)
    except InvalidRequest as err:
        parser.exit(2, f"python -m client: error: {err}\n")
    except ClientError as err:
        print(f"python -m client: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict()) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
