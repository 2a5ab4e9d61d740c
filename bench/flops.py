"""FLOPs per request of each model part, estimated from the export's configuration.

A lower bound on the arithmetic a request needs, to set the measured CPU-ms per request
against: 2 FLOPs per multiply-add of every dense layer and recurrent step; element-wise
work (activations, normalisation, softmax) and embedding look-ups are left out. The
formulas are in docs/benchmarks.md ('FLOPs per request').

Notation: e = behaviour embedding size (item + category, 2 x embedding_dim), H = GRU
units, K = ring size, a = attention units, u = MLP units, N = candidates; MIMN: d = slot
size (= e), m = slots, C = controller units, U = MIU units.
"""

from __future__ import annotations

from collections.abc import Sequence


def dense(n_in: int, n_out: int) -> int:
    return 2 * n_in * n_out


def gru_step(n_in: int, units: int) -> int:
    """Three gates, each an input and a recurrent matrix product."""
    return 3 * (dense(n_in, units) + dense(units, units))


def mlp(n_in: int, units: Sequence[int]) -> int:
    total, prev = 0, n_in
    for size in (*units, 1):
        total += dense(prev, size)
        prev = size
    return total


def attention(query_dim: int, fact_dim: int, facts: int, units: Sequence[int],
              project_query: bool) -> tuple[int, int]:
    """(per candidate, per user) FLOPs of the DIN attention over `facts` facts: the fact
    projection is shared by every candidate of a request, the rest is per candidate."""
    first = units[0]
    per_candidate = dense(query_dim, fact_dim) if project_query else 0
    per_candidate += dense(fact_dim, first)  # query term
    per_fact = dense(fact_dim, first) + mlp(first, units[1:])  # product term, hidden, score
    per_candidate += facts * per_fact
    return per_candidate, facts * dense(fact_dim, first)


def _cfg(config: dict, model: str) -> dict:
    emb = config.get("embedding_dim") or (16 if model == "mimn" else 18)
    return {**config, "e": 2 * int(emb)}


def head_flops(model: str, config: dict, candidates: int) -> int:
    """FLOPs of one `head` request: one user, `candidates` candidates."""
    c = _cfg(config, model)
    e, a, u = c["e"], tuple(c["attention_units"]), tuple(c["mlp_units"])
    if model == "dien":
        h, k = c["gru_units"], c["ring_size"]
        per_cand, per_user = attention(e, h, k, a, project_query=True)
        per_cand += k * gru_step(h, h)  # AUGRU over the K ring states
        per_cand += mlp(3 * e + h, u)
        return candidates * per_cand + per_user
    if model == "mimn":
        m, ctrl, miu = c["memory_slots"], c["controller_units"], c["miu_units"]
        params = 4 * e + 2 + (4 if c.get("use_mur", True) else 0)
        read = (gru_step(2 * e, ctrl) + dense(ctrl + (m if c.get("use_mur", True) else 0), params)
                + 2 * dense(e, m)  # similarity to the key memory and to the memory
                + dense(m, e)  # weighted read
                + dense(ctrl + e, e))  # read-out
        per_cand, per_user = attention(e, miu, m, a, project_query=(e != miu))
        per_cand += read + dense(m, miu) + mlp(4 * e + miu, u)
        return candidates * per_cand + per_user
    if model == "mlp":
        return candidates * mlp(3 * c["e"], u)
    raise ValueError(f"no FLOP formula for model {model!r}; known: dien, mimn, mlp")


def step_flops(model: str, config: dict) -> int:
    """FLOPs of folding one behaviour into the state (one `step` / one `tower` position)."""
    c = _cfg(config, model)
    e = c["e"]
    if model == "dien":
        return gru_step(e, c["gru_units"])
    if model == "mimn":
        m, ctrl, miu = c["memory_slots"], c["controller_units"], c["miu_units"]
        mur = c.get("use_mur", True)
        params = 4 * e + 2 + (4 if mur else 0)
        return (gru_step(2 * e, ctrl) + dense(ctrl + (m if mur else 0), params)
                + 4 * dense(e, m)  # read and write addressing
                + dense(m, e) + 2 * dense(m, e)  # read, erase and add
                + gru_step(2 * e, miu))  # the MIU step of the chosen channel
    if model == "mlp":
        return 0
    raise ValueError(f"no FLOP formula for model {model!r}; known: dien, mimn, mlp")


def full_flops(model: str, config: dict, seq_len: int, candidates: int) -> int:
    """FLOPs of one `full` request: the tower over `seq_len` behaviours, then the head."""
    return seq_len * step_flops(model, config) + head_flops(model, config, candidates)


def request_flops(arch: str, model: str, config: dict, seq_len: int, candidates: int) -> int:
    """Architecture B calls the head; A calls the full model over the last `seq_len`."""
    if arch == "B":
        return head_flops(model, config, candidates)
    return full_flops(model, config, seq_len, candidates)
