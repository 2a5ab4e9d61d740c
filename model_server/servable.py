"""One loaded SavedModel version: its signatures, metadata and the call path.

Signatures are called as flat concrete functions (the arguments in the function's own order
plus its captured variables), which skips the keyword binding of `sig(**kwargs)`: about a
third of the per-call cost for a small head. Input dtypes come from the SignatureDef in
`saved_model.pb` (what TF Serving checks), and metadata is taken from the same MetaGraphDef
so `__saved_model_init_op` and the graph tensor names show up as TF Serving reports them.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from model_server.deadlines import cancel_at_deadline
from model_server.errors import ServingError, from_tf_exception, invalid
from model_server.tensors import dtype_name, numpy_dtype

log = logging.getLogger("model_server")

DEFAULT_SIGNATURE = "serving_default"


class Signature:
    """A callable signature with the facts requests are checked against."""

    def __init__(self, name: str, sig_def, function):
        self.name = name
        self.sig_def = sig_def
        self.method_name = sig_def.method_name
        self.inputs = {alias: info.dtype for alias, info in sig_def.inputs.items()}
        self.outputs = {alias: info.dtype for alias, info in sig_def.outputs.items()}
        self.input_names = tuple(sorted(self.inputs))
        self.output_names = tuple(sorted(self.outputs))
        self.input_index = {alias: i for i, alias in enumerate(self.input_names)}
        self.input_np_dtypes = {alias: _np_dtype_or_none(d) for alias, d in self.inputs.items()}
        # static shape of each input: None (unknown rank) or a tuple with -1 for free dims
        self.input_shapes = {}
        for alias, info in sig_def.inputs.items():
            shape = info.tensor_shape
            self.input_shapes[alias] = (
                None if shape.unknown_rank else tuple(d.size for d in shape.dim)
            )
        self.function = function
        self._order = None
        self._captured = None
        if function is not None:
            try:
                params = list(function.function_type.parameters)
                if sorted(params) == sorted(self.inputs):
                    self._order = params
                    self._captured = function.captured_inputs
            except AttributeError:  # older TF: fall back to keyword calls
                self._order = None
        self.batcher = None  # set by the batching layer when enabled
        self.refusal: ServingError | None = None  # why every call fails (XLA off)

    def check_shape(self, alias: str, shape: tuple[int, ...]) -> None:
        expected = self.input_shapes.get(alias)
        if expected is None:
            return
        if len(expected) != len(shape) or any(e >= 0 and e != s for e, s in zip(expected, shape, strict=False)):
            raise invalid(
                f"input '{alias}' has shape {list(shape)} but signature '{self.name}' expects "
                f"{[e if e >= 0 else None for e in expected]} (None = any size)"
            )

    def call(self, inputs: dict[str, np.ndarray], timeout: float | None = None) -> dict:
        """Run the graph on already checked inputs; returns {alias: tf.Tensor}. With a
        `timeout` the run is cancelled when it passes (DEADLINE_EXCEEDED)."""
        import tensorflow as tf

        if self.refusal is not None:
            raise self.refusal
        with cancel_at_deadline(timeout) as timer:
            try:
                if self._order is not None:
                    tensors = [tf.constant(inputs[name]) for name in self._order]
                    return self.function._call_flat(tensors, self._captured)
                return self.function(**inputs)
            except ServingError:
                raise
            except Exception as exc:  # noqa: BLE001 - every graph error becomes a status
                if timer is not None and timer.fired:
                    raise ServingError(
                        "DEADLINE_EXCEEDED", f"graph run of signature '{self.name}' cancelled "
                        f"at the request deadline ({timeout * 1000:.0f} ms)") from None
                raise from_tf_exception(exc) from None

    def run(self, inputs: dict[str, np.ndarray], output_filter=None, timeout=None) -> dict:
        """Run through the batcher when one is attached, else directly; numpy outputs."""
        if self.batcher is not None:
            outputs = self.batcher.submit(inputs, timeout)
        else:
            outputs = self.call(inputs, timeout)
        names = output_filter or self.output_names
        return {name: _to_numpy(outputs[name]) for name in names}


def _to_numpy(value) -> np.ndarray:
    """An output as an array: `.numpy()` of a scalar gives a numpy scalar, or plain `bytes`
    for a string, which the writers cannot shape."""
    value = value.numpy() if hasattr(value, "numpy") else value
    if isinstance(value, np.ndarray):
        return value
    return np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value)


def _np_dtype_or_none(enum):
    try:
        return numpy_dtype(enum)
    except KeyError:
        return None


class LoadedModel:
    """A servable (model name, version) that is loaded and ready to run."""

    def __init__(self, name: str, version: int, path: Path, saved_model, meta_graph,
                 signatures: dict[str, Signature]):
        self.name = name
        self.version = version
        self.path = Path(path)
        self.saved_model = saved_model  # keeps the variables alive
        self.meta_graph = meta_graph
        self.signatures = signatures
        self._metadata_lock = threading.Lock()
        self._signature_def_map = None
        self._metadata_json = None
        self.stage_micros: dict[str, float] = {}  # load time per TF loader stage

    def signature(self, name: str, grpc: bool = True) -> Signature:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None or sig.function is None:
            sig_name = name or DEFAULT_SIGNATURE
            if grpc:
                raise ServingError("FAILED_PRECONDITION",
                                   f'Serving signature key "{sig_name}" not found.')
            raise invalid(f'Serving signature name: "{sig_name}" not found in signature def')
        return sig

    def signature_def_map(self):
        """tensorflow.serving.SignatureDefMap with every SignatureDef of the MetaGraph."""
        with self._metadata_lock:
            if self._signature_def_map is None:
                from tensorflow_serving.apis import get_model_metadata_pb2

                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for key, sig_def in self.meta_graph.signature_def.items():
                    sig_map.signature_def[key].CopyFrom(sig_def)
                self._signature_def_map = sig_map
            return self._signature_def_map

    def metadata_json(self) -> str:
        """The REST metadata body's `"signature_def"` value (cached; it never changes)."""
        with self._metadata_lock:
            cached = self._metadata_json
        if cached is None:
            from google.protobuf import json_format

            cached = json_format.MessageToJson(
                self.signature_def_map(), preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True, indent=None)
            with self._metadata_lock:
                self._metadata_json = cached
        return cached


def read_meta_graph(path: Path, tags: set[str]):
    """The MetaGraphDef of `saved_model.pb` whose tag set equals `tags`."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(path) / "saved_model.pb"
    if not pb.is_file():
        raise ServingError("NOT_FOUND",
                           f"Could not find SavedModel .pb or .pbtxt at supplied export "
                           f"directory path: {path}")
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(pb.read_bytes())
    except Exception as exc:  # noqa: BLE001
        raise ServingError("DATA_LOSS", f"cannot parse {pb}: {exc}") from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError("NOT_FOUND",
                       f"Could not find meta graph def matching supplied tags: {{ "
                       f"{' '.join(sorted(tags))} }}. Available tags: {found}. To inspect "
                       f"available tag-sets in the SavedModel, please use the SavedModel CLI: "
                       f"`saved_model_cli`")


def uses_xla(meta_graph) -> bool:
    """Whether the graph holds functions compiled with XLA (`jit_compile=True` marks them
    `_XlaMustCompile`; an already clustered graph has XlaLaunch ops)."""
    library = meta_graph.graph_def.library
    for function in library.function:
        attr = function.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            return True
    nodes = [*meta_graph.graph_def.node, *(n for f in library.function for n in f.node_def)]
    for node in nodes:
        attr = node.attr.get("_XlaMustCompile")
        if node.op == "XlaLaunch" or (attr is not None and attr.b):
            return True
    return False


def xla_refusal(name: str, version: int) -> ServingError:
    return ServingError(
        "FAILED_PRECONDITION",
        f"model {name} version {version} was compiled with XLA (jit_compile=True), and XLA:CPU "
        f"JIT compilation is off on this server, as in TF Serving by default: start the server "
        f"with --xla_cpu_compilation_enabled=true, or export the model without jit_compile")


def load_model(name: str, version: int, path: Path, tags=("serve",),
               xla_enabled: bool = True) -> LoadedModel:
    """Load one version directory. Raises ServingError on failure. With `xla_enabled`
    false an XLA-compiled model loads, but every call fails with a status saying so (TF
    Serving fails its first compilation request; a warm-up record makes that the load)."""
    import tensorflow as tf

    started = time.monotonic()
    tag_set = set(tags)
    meta_graph = read_meta_graph(path, tag_set)
    try:
        saved = tf.saved_model.load(str(path), tags=sorted(tag_set))
    except Exception as exc:  # noqa: BLE001
        raise ServingError("UNKNOWN", f"failed to load SavedModel {path}: {exc}") from None
    restored = time.monotonic()
    functions = getattr(saved, "signatures", {}) or {}
    signatures = {}
    for key, sig_def in meta_graph.signature_def.items():
        fn = functions.get(key)
        if fn is None:
            continue  # e.g. __saved_model_init_op: listed in metadata, not callable
        unsupported = [a for a, d in sig_def.inputs.items() if _np_dtype_or_none(d.dtype) is None]
        if unsupported:
            log.warning("signature %s of %s v%d has inputs of unsupported dtypes %s",
                        key, name, version, [(a, dtype_name(sig_def.inputs[a].dtype))
                                             for a in unsupported])
        signatures[key] = Signature(key, sig_def, fn)
    if not xla_enabled and uses_xla(meta_graph):
        refusal = xla_refusal(name, version)
        for sig in signatures.values():
            sig.refusal = refusal
    loaded = LoadedModel(name, version, Path(path), saved, meta_graph, signatures)
    # TF's load_latency_by_stage stages; tf.saved_model.load restores and initialises in
    # one call, so "init_graph" is the signature set-up that follows it
    loaded.stage_micros = {"restore_graph": (restored - started) * 1e6,
                           "init_graph": (time.monotonic() - restored) * 1e6}
    return loaded
