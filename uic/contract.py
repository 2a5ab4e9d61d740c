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


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy/TF dtype name: "int64", "int32", "float32"
    shape: tuple[str | None, ...]  # symbolic dims: "B", "L", "T", "N", "S", or 1


# inputs, outputs per part. Symbolic dims: B batch of users, L history length, T new events,
# N candidates, S state size (fixed per export, see metadata).
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
            TensorSpec("state", "float32", (1, "S")),
            TensorSpec("cand_item_ids", "int64", ("N",)),
            TensorSpec("cand_cate_ids", "int64", ("N",)),
        ),
        (TensorSpec("ctr", "float32", ("N",)),),
    ),
    "full": (
        (
            TensorSpec("hist_item_ids", "int64", (1, "L")),
            TensorSpec("hist_cate_ids", "int64", (1, "L")),
            TensorSpec("hist_len", "int32", (1,)),
            TensorSpec("cand_item_ids", "int64", ("N",)),
            TensorSpec("cand_cate_ids", "int64", ("N",)),
        ),
        (TensorSpec("ctr", "float32", ("N",)),),
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


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """Contents of ``assets.extra/uic_metadata.json`` (identical in all four parts of one run).

    `state_layout` lists the state's components in packing order as (name, size) pairs; their
    sizes add up to `state_size`. `ring_size` is DIEN's K, `memory_slots` is MIMN's m.
    """

    model: str
    version: int
    state_size: int
    state_layout: tuple[tuple[str, int], ...]
    layout_version: int = STATE_LAYOUT_VERSION
    ring_size: int | None = None
    memory_slots: int | None = None
    config: dict | None = None

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["state_layout"] = [list(item) for item in self.state_layout]
        return json.dumps(record, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExportMetadata:
        record = json.loads(text)
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
        return cls.from_json(path.read_text())
