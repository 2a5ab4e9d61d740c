"""Export a model's four parts as TF Serving SavedModels (docs/models.md, 'Export').

``<out>/<model>_<part>/<version>/`` for part in tower, step, head, full, each with the
contract's `serving_default` signature (uic.contract.SIGNATURES), TF Serving warm-up records
in ``assets.extra/tf_serving_warmup_requests`` and ``assets.extra/uic_metadata.json``.

CLI::

    python -m tf_models.export --run runs/dien --out saved_models --version 1 [--xla off]

`--xla on` (default) XLA-compiles head and full (faster; the real `tensorflow_model_server`
runs them only with `--xla_cpu_compilation_enabled=true`); `--xla off` writes a portable
plain graph. The metadata's `xla` field records which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_models.base import UICModel
from tf_models.config import ModelConfig
from tf_models.models import build_model
from tf_models.run import load_run
from uic.contract import (
    CANDIDATE_SIZES,
    PARTS,
    SIGNATURE_NAME,
    SIGNATURES,
    WARMUP_FILE,
    ExportMetadata,
    export_dir,
    serving_model_name,
)


def _tensor_spec(spec, state_size: int) -> tf.TensorSpec:
    dims = []
    for dim in spec.shape:
        if dim == "S":
            dims.append(state_size)
        elif isinstance(dim, int):
            dims.append(dim)
        else:
            dims.append(None)
    return tf.TensorSpec(dims, tf.as_dtype(spec.dtype), name=spec.name)


# Candidates per XLA-compiled block of the served head (0: plain TF graph), and a second,
# small block for requests of at most SMALL_XLA_BLOCK candidates, so that a 1-candidate
# request does not pay for 100 rows. They are the largest and smallest of the candidate
# counts clients pad to (uic.contract.CANDIDATE_SIZES), so a padded request fills its blocks.
XLA_BLOCK = CANDIDATE_SIZES[-1]
SMALL_XLA_BLOCK = CANDIDATE_SIZES[0]


def blocked_head(model: UICModel, block: int):
    """`model.head` for [B, S] states and [B, N] candidates, scoring each row's candidates in
    blocks of `block` through one XLA-compiled function of static shape (one state row, one
    block), so XLA compiles once per model and block size, not once per request shape: a
    DIEN head takes seconds to compile.

    Each row's candidate embeddings are padded with zero rows to a multiple of `block`; the
    blocks of all rows run one after another, each against its own row's state, and the
    padding scores are dropped. A candidate's score does not depend on the other rows, so the
    real ones are the plain head's (up to float rounding in XLA's fused kernels, ~1e-7). One
    user (B = 1) with up to `block` candidates is a single block, called without the loop
    (the loop's machinery cost about 0.7 ms of a 3.4 ms MIMN head call on this machine)."""
    def compiled(size: int):
        spec = [tf.TensorSpec([1, model.state_size], tf.float32),
                tf.TensorSpec([size, model.behaviour_dim], tf.float32)]
        return size, tf.function(model.head_embedded, input_signature=spec, jit_compile=True)

    large = compiled(block)
    small = compiled(SMALL_XLA_BLOCK) if SMALL_XLA_BLOCK < block else large

    def in_blocks(state, cand, size_and_core):
        size, core = size_and_core
        rows, count = tf.shape(cand)[0], tf.shape(cand)[1]
        cand = tf.pad(cand, [[0, 0], [0, tf.math.floormod(-count, size)], [0, 0]])

        def one_block():  # one user, one block (an ad request): no loop around the call
            # slices, not reshapes: with a reshape of `state` to [1, S] here, the optimised
            # graph treated `state` as one row in the other branch too (rows > 1 failed)
            ctr = core(tf.ensure_shape(state[:1], [1, model.state_size]),
                       tf.ensure_shape(cand[0], [size, model.behaviour_dim]))
            return ctr[None, :count]

        def loop():
            blocks = tf.reshape(cand, [-1, size, model.behaviour_dim])  # row b's blocks in turn
            owner = tf.repeat(tf.range(rows), tf.shape(cand)[1] // size)
            ctr = tf.map_fn(lambda job: core(tf.gather(state, job[0])[None], job[1]),
                            (owner, blocks), fn_output_signature=tf.TensorSpec([size], tf.float32),
                            parallel_iterations=1)
            return tf.reshape(ctr, [rows, -1])[:, :count]

        return tf.cond(tf.logical_and(tf.equal(rows, 1), count <= size), one_block, loop)

    def head(state, cand_item_ids, cand_cate_ids):
        # the lookup stays outside XLA: the compiled block never touches the big tables
        cand = model.embed_candidates(state, cand_item_ids, cand_cate_ids)
        if small is large:
            return in_blocks(state, cand, large)
        return tf.cond(tf.shape(cand)[1] <= small[0], lambda: in_blocks(state, cand, small),
                       lambda: in_blocks(state, cand, large))

    return head


def _serving_method(model: UICModel, part: str, xla_block: int):
    """The Python function behind one part's signature: the model's method, or for `head`
    and `full` the XLA-blocked head when `xla_block` > 0."""
    if xla_block <= 0 or part not in ("head", "full"):
        return getattr(model, part)
    head = blocked_head(model, xla_block)
    if part == "head":
        return head

    def full(hist_item_ids, hist_cate_ids, hist_len, cand_item_ids, cand_cate_ids):
        return head(model.tower(hist_item_ids, hist_cate_ids, hist_len), cand_item_ids, cand_cate_ids)

    return full


def part_function(model: UICModel, part: str, xla_block: int = 0):
    """`model.<part>` as a tf.function with the contract's input signature (positional
    arguments in contract order, named as in the contract); returns {output name: tensor}.
    `xla_block` > 0 serves `head`/`full` through `blocked_head` (what exports do)."""
    inputs, outputs = SIGNATURES[part]
    specs = [_tensor_spec(s, model.state_size) for s in inputs]
    method = _serving_method(model, part, xla_block)
    out_name = outputs[0].name
    names = [s.name for s in inputs]
    namespace = {"method": method, "out_name": out_name}
    # a real function whose parameters carry the contract names (they become the signature's
    # input keys in the SavedModel)
    exec(  # noqa: S102
        f"def {part}({', '.join(names)}):\n    return {{out_name: method({', '.join(names)})}}\n",
        namespace,
    )
    return tf.function(namespace[part], input_signature=specs)


class _PartModule(tf.Module):
    """Holds the Keras model (so its variables are saved) and one serving function."""

    def __init__(self, model: UICModel, part: str, xla_block: int):
        super().__init__(name=f"{model.model_name}_{part}")
        self.model = model
        self.serve = part_function(model, part, xla_block)


def warmup_dims(part: str) -> list[dict[str, int]]:
    """Dims of each warm-up request. `head` and `full`: one user (B = 1) with each candidate
    count clients pad to (uic.contract.CANDIDATE_SIZES), so both XLA blocks are compiled
    and every padded shape has run before the first real request, plus a two-user batch as
    server-side batching makes. `tower` and `step`: batches of 1, 2 and 9 users."""
    if part in ("head", "full"):
        return ([{"B": 1, "N": n, "L": 5} for n in CANDIDATE_SIZES]
                + [{"B": 2, "N": CANDIDATE_SIZES[0], "L": 5}])
    return [{"B": rows, "L": length, "T": length} for rows, length in ((1, 1), (2, 5), (9, 5))]


def _warmup_inputs(part: str, state_size: int, dims: dict[str, int], rng) -> dict[str, np.ndarray]:
    """Contract-shaped inputs of one warm-up request: random ids, full lengths, zero states."""
    inputs, _ = SIGNATURES[part]
    sizes = {**dims, "S": state_size}
    out = {}
    for spec in inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
        if spec.dtype == "int64":
            out[spec.name] = rng.integers(1, 1000, size=shape, dtype=np.int64)
        elif spec.dtype == "int32":
            out[spec.name] = np.full(shape, sizes.get("L", sizes.get("T")), dtype=np.int32)
        else:
            out[spec.name] = np.zeros(shape, dtype=np.float32)
    return out


def write_warmup(saved_model_dir: Path, serving_name: str, part: str, state_size: int) -> Path:
    """TF Serving warm-up file: TFRecord of PredictionLog, one PredictLog request each."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for dims in warmup_dims(part):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=serving_name, signature_name=SIGNATURE_NAME)
            )
            for name, value in _warmup_inputs(part, state_size, dims, rng).items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def metadata_for(model: UICModel, version: int, xla: bool) -> ExportMetadata:
    cfg = model.config
    return ExportMetadata(
        model=model.model_name,
        version=int(version),
        state_size=model.state_size,
        state_layout=tuple(model.state_layout()),
        ring_size=cfg.ring_size if model.model_name == "dien" else None,
        memory_slots=cfg.memory_slots if model.model_name == "mimn" else None,
        config={**cfg.to_dict(), "embedding_dim": model.emb_dim},
        xla=xla,
    )


def save_part(model: UICModel, part: str, target: Path, version: int,
              xla_block: int | None = None) -> Path:
    """Write one part to `target` atomically (temp dir + rename), so a server polling the
    base path never sees a half-written version. `xla_block` (default `XLA_BLOCK`): see
    `blocked_head`; 0 exports the portable plain TF graph (no `jit_compile`)."""
    xla_block = XLA_BLOCK if xla_block is None else int(xla_block)
    if xla_block < 0:
        raise ValueError(f"xla_block must be >= 0 (0 disables XLA), got {xla_block}")
    target = Path(target)
    if target.exists():
        raise FileExistsError(
            f"{target} already exists: pick a new --version or delete that directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        module = _PartModule(model, part, xla_block)
        tf.saved_model.save(
            module, str(tmp), signatures={SIGNATURE_NAME: module.serve.get_concrete_function()}
        )
        metadata_for(model, version, xla=xla_block > 0).write(tmp)
        write_warmup(tmp, serving_model_name(model.model_name, part), part, model.state_size)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_model(
    model_name: str,
    out_root,
    version: int,
    *,
    config: ModelConfig | None = None,
    trained: UICModel | None = None,
    seed: int = 0,
    parts=PARTS,
    xla_block: int | None = None,
) -> dict[str, Path]:
    """Export `trained` (or a freshly initialised model built from `config` and `seed`) as
    ``<out_root>/<model>_<part>/<version>/`` for each part. Returns {part: path}.
    `xla_block`: candidates per XLA-compiled head block (default `XLA_BLOCK`; 0: no XLA)."""
    if trained is not None:
        if trained.model_name != model_name:
            raise ValueError(f"trained model is {trained.model_name!r}, asked to export {model_name!r}")
        model = trained
    else:
        model = build_model(model_name, config or ModelConfig(), seed=seed)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; expected some of {list(PARTS)}")
    return {
        part: save_part(model, part, export_dir(out_root, model_name, part, version), version,
                        xla_block)
        for part in parts
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tf_models.export",
        description="Export a trained run (tf_models.train) as four TF Serving SavedModels.",
    )
    parser.add_argument("--run", required=True, help="run directory written by tf_models.train")
    parser.add_argument("--out", default="saved_models", help="export root (default saved_models)")
    parser.add_argument("--version", type=int, required=True, help="positive integer version")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts (default all)")
    parser.add_argument("--xla", choices=("on", "off"), default="on",
                        help="on (default): head and full are XLA-compiled, faster, and need "
                             "--xla_cpu_compilation_enabled=true on tensorflow_model_server; "
                             "off: a portable plain TF graph that any TF Serving runs")
    args = parser.parse_args(argv)
    if args.version <= 0:
        parser.error(f"--version must be a positive integer, got {args.version}")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        parser.error(f"--parts: unknown part(s) {bad}; choose from {list(PARTS)}")
    try:
        model = load_run(args.run)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    existing = [
        str(export_dir(args.out, model.model_name, p, args.version))
        for p in parts
        if export_dir(args.out, model.model_name, p, args.version).exists()
    ]
    if existing:
        parser.error(f"already exported: {existing}; pick a new --version")
    from tqdm import tqdm

    written = {}
    for part in tqdm(parts, desc=f"export {model.model_name} v{args.version}", unit="part"):
        written[part] = str(
            save_part(model, part, export_dir(args.out, model.model_name, part, args.version),
                      args.version, XLA_BLOCK if args.xla == "on" else 0)
        )
    print(json.dumps({"model": model.model_name, "version": args.version,
                      "state_size": model.state_size, "xla": args.xla == "on",
                      "parts": written}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
