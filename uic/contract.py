"""The model contract: part names, their `serving_default` signatures, where exports live,
and the metadata file every export carries (docs/models.md, 'The model contract').

This is the one place that says what a `tower`, `step`, `head` or `full` SavedModel takes and
returns. tf_models builds its exports from `SIGNATURES`; beam_jobs, client, the model server
tests and the benchmarks read the same table, so the parts cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

PARTS: tuple[str, ...] = ("tower", "step", "head", "full")
MODELS: tuple[str, ...] = ("dien", "mimn", "mlp")
"""Every model the project trains and exports; `mlp` is the Embedding&MLP baseline."""
SEQUENCE_MODELS: tuple[str, ...] = ("dien", "mimn")
"""Models with an interest state (tower, step, head parts) kept in the store."""
SIGNATURE_NAME = "serving_default"
METADATA_FILE = "assets.extra/uic_metadata.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
STATE_LAYOUT_VERSION = 1
CONTRACT_VERSION = 2
"""Version of `SIGNATURES`, recorded in every export's metadata. Version 1 had a [1, S] state
with [N] candidates for `head` (and [1, L] histories for `full`), which no server-side
batching can merge; readers refuse it (`ExportMetadata.from_json`)."""

# Candidate counts a client pads its request to (docs/client.md, 'Candidate padding'): a
# few fixed sizes, then multiples of the last one. They match the exported heads' XLA
# blocks (tf_models.export: a block of the smallest size and blocks of the largest), so a
# padded request never pays for a partly empty block beyond what the padding already adds.
CANDIDATE_SIZES: tuple[int, ...] = (8, 16, 32, 64, 100)


def padded_candidate_count(n: int) -> int:
    """The smallest of `CANDIDATE_SIZES` that holds `n` candidates, else the next multiple
    of the largest size (e.g. 5 -> 8, 100 -> 100, 101 -> 200)."""
    if n <= 0:
        raise ValueError(f"need at least one candidate, got {n}")
    for size in CANDIDATE_SIZES:
        if n <= size:
            return size
    step = CANDIDATE_SIZES[-1]
    return -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy/TF dtype name: "int64", "int32", "float32"
    shape: tuple[str | None, ...]  # symbolic dims: "B", "L", "T", "N", "S", or 1


# inputs, outputs per part. Symbolic dims: B batch of users, L history length, T new events,
# N candidates, S state size (fixed per export, see metadata). Every input of a part has B
# as its dim 0, so server-side batching can concatenate concurrent requests (one ad request
# is B = 1); row b of `ctr` scores row b's candidates against row b's state or history.
SIGNATURES: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "tower": (
        (
            TensorSpec("hist_item_ids", "int64", ("B", "L")),
            TensorSpec("hist_cate_ids", "int64", ("B", "L")),
            TensorSpec("hist_len", "int32", ("B",)),
        ),
        (TensorSpec("state", "float32", ("B", "S")),),
    ),
    "step": (
        (
            TensorSpec("state", "float32", ("B", "S")),
            TensorSpec("item_ids", "int64", ("B", "T")),
            TensorSpec("cate_ids", "int64", ("B", "T")),
            TensorSpec("num_events", "int32", ("B",)),
        ),
        (TensorSpec("state", "float32", ("B", "S")),),
    ),
    "head": (
        (
            TensorSpec("state", "float32", ("B", "S")),
            TensorSpec("cand_item_ids", "int64", ("B", "N")),
            TensorSpec("cand_cate_ids", "int64", ("B", "N")),
        ),
        (TensorSpec("ctr", "float32", ("B", "N")),),
    ),
    "full": (
        (
            TensorSpec("hist_item_ids", "int64", ("B", "L")),
            TensorSpec("hist_cate_ids", "int64", ("B", "L")),
            TensorSpec("hist_len", "int32", ("B",)),
            TensorSpec("cand_item_ids", "int64", ("B", "N")),
            TensorSpec("cand_cate_ids", "int64", ("B", "N")),
        ),
        (TensorSpec("ctr", "float32", ("B", "N")),),
    ),
}


def serving_model_name(model: str, part: str) -> str:
    """Name under which a part is exported and served, e.g. ``dien_head``."""
    if part not in PARTS:
        raise ValueError(f"unknown model part {part!r}; expected one of {list(PARTS)}")
    return f"{model}_{part}"


def export_dir(root: str | os.PathLike, model: str, part: str, version: int) -> Path:
    """``<root>/<model>_<part>/<version>/`` as TF Serving expects (numeric version dirs)."""
    if int(version) <= 0:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return Path(root) / serving_model_name(model, part) / str(int(version))


def latest_version(root: str | os.PathLike, model: str, part: str = "head") -> int | None:
    """Highest numeric version directory of an exported part, or None if there is none."""
    base = Path(root) / serving_model_name(model, part)
    if not base.is_dir():
        return None
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions) if versions else None


class IncompatibleExport(ValueError):
    """An export built for another contract version than this code's `CONTRACT_VERSION`."""


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """Contents of ``assets.extra/uic_metadata.json`` (identical in all four parts of one run).

    `state_layout` lists the state's components in packing order as (name, size) pairs; their
    sizes add up to `state_size`. `ring_size` is DIEN's K, `memory_slots` is MIMN's m.
    `contract_version` is the `SIGNATURES` version the export was built for; `xla` says
    whether its `head` and `full` are XLA-compiled (then the real TF Serving needs
    `--xla_cpu_compilation_enabled=true`; tower and step never are).
    """

    model: str
    version: int
    state_size: int
    state_layout: tuple[tuple[str, int], ...]
    layout_version: int = STATE_LAYOUT_VERSION
    ring_size: int | None = None
    memory_slots: int | None = None
    config: dict | None = None
    contract_version: int = CONTRACT_VERSION
    xla: bool = False

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["state_layout"] = [list(item) for item in self.state_layout]
        return json.dumps(record, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "export") -> ExportMetadata:
        """Parse the metadata; refuses an export of another contract version (`source`
        names it in the error)."""
        record = json.loads(text)
        found = record.get("contract_version", 1)  # version 1 did not record it
        if found != CONTRACT_VERSION:
            raise IncompatibleExport(
                f"{source} was exported for model contract version {found}, this code uses "
                f"version {CONTRACT_VERSION} (batch-major [B, N] candidates); re-export with "
                "this version: make export"
            )
        record["state_layout"] = tuple((str(n), int(s)) for n, s in record["state_layout"])
        meta = cls(**record)
        total = sum(size for _, size in meta.state_layout)
        if total != meta.state_size:
            raise ValueError(
                f"corrupt metadata: state_layout sums to {total}, state_size says {meta.state_size}"
            )
        return meta

    def write(self, saved_model_dir: str | os.PathLike) -> Path:
        path = Path(saved_model_dir) / METADATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, saved_model_dir: str | os.PathLike) -> ExportMetadata:
        path = Path(saved_model_dir) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: is {saved_model_dir} a UIC export? Run `make export` first."
            )
        return cls.from_json(path.read_text(), source=str(saved_model_dir))
