"""The thin serving client: Redis join + TF Serving Predict, for architectures A and B.

    from client import Scorer
    with Scorer("dien", redis_url="redis://127.0.0.1:6379/0", server="127.0.0.1:8500") as s:
        result = s.score(42, [1001, 1002], [7, 9])
        result.scores, result.status, result.version, result.redis_ms, result.rpc_ms

See docs/client.md. TensorFlow is not imported (see client/protos.py).
"""

from client.errors import (
    ClientError,
    InvalidRequest,
    ModelServerError,
    ModelServerUnavailable,
    NotDeployed,
    StateStoreUnavailable,
)
from client.scorer import Scorer, ScoreResult, ScoreStatus
from client.tls import TlsConfig

__all__ = [
    "ClientError", "InvalidRequest", "ModelServerError", "ModelServerUnavailable",
    "NotDeployed", "ScoreResult", "ScoreStatus", "Scorer", "StateStoreUnavailable", "TlsConfig",
]
