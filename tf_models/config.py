"""One configuration object for every model, with the papers' defaults.

Where the DIEN/MIMN papers and their official code differ, the field's comment says which
one the default follows (docs/models.md, 'Choices', has the full list).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # --- ids: raw int64 ids are hashed into these many rows; row 0 is padding (id 0) -------
    item_buckets: int = 200_000
    cate_buckets: int = 10_000
    # --- shared -------------------------------------------------------------------------
    # per-id embedding size; None = the paper default of each model (DIEN code 18, MIMN 16,
    # which makes MIMN's memory slot 2 x 16 = 32 wide as in its code)
    embedding_dim: int | None = None
    mlp_units: tuple[int, ...] = (200, 80)  # both papers: FCN 200 x 80 x (2 softmax = 1 sigmoid)
    # How the head reads the behaviour-embedding sum kept in the state: "mean" divides by the
    # event count (robust when the serving state folds more events than training saw); "sum"
    # is what both official codes feed the MLP.
    history_pooling: str = "mean"
    # --- DIEN ----------------------------------------------------------------------------
    gru_units: int = 36  # interest extractor and evolution GRUs (DIEN code HIDDEN_SIZE)
    ring_size: int = 50  # K: last extractor states kept for the AUGRU (paper maxlen 50)
    attention_units: tuple[int, ...] = (80, 40)  # DIN attention MLP (both codes), sigmoid
    augru_form: str = "paper"  # "paper": u' = a*u ; "official": u_keep' = (1-a)*u_keep
    aux_loss_weight: float = 1.0  # alpha in L = L_target + alpha * L_aux (paper: 1)
    aux_units: tuple[int, ...] = (100, 50)  # auxiliary net (DIEN code), sigmoid
    dice_epsilon: float = 1e-9
    # moving-average momentum of BatchNorm and Dice statistics (used at serving time); 0.9
    # rather than Keras' 0.99 so short runs end with statistics of the trained network
    norm_momentum: float = 0.9
    # --- MIMN ----------------------------------------------------------------------------
    memory_slots: int = 8  # m (paper's headline tables use 8; code CLI default 4)
    controller_units: int = 32  # controller GRU (code)
    miu_units: int = 32  # MIU GRU hidden (paper and code)
    clip_value: float = 20.0  # head-parameter / read-out clipping (code)
    use_mur: bool = True  # memory utilisation regularisation (code form: shift + sharpen)
    mur_weight: float = 0.001  # lambda of the variance loss on the accumulated write weight
    mur_scale: float = 400.0  # controller sees stop_grad(g / mur_scale) (code)
    # --- training ------------------------------------------------------------------------
    learning_rate: float = 0.001  # Adam, both papers
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "item_buckets": self.item_buckets >= 2,
            "cate_buckets": self.cate_buckets >= 2,
            "embedding_dim": self.embedding_dim is None or self.embedding_dim >= 1,
            "gru_units": self.gru_units >= 1,
            "ring_size": self.ring_size >= 1,
            "memory_slots": self.memory_slots >= 2,
            "controller_units": self.controller_units >= 1,
            "miu_units": self.miu_units >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ModelConfig.{name} is too small: {getattr(self, name)!r}")
        if self.history_pooling not in ("mean", "sum"):
            raise ValueError(
                f"ModelConfig.history_pooling must be 'mean' or 'sum', got {self.history_pooling!r}"
            )
        if self.augru_form not in ("paper", "official"):
            raise ValueError(
                f"ModelConfig.augru_form must be 'paper' or 'official', got {self.augru_form!r}"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """Small dims for tests: builds and exports in seconds."""
        values = dict(
            item_buckets=1000,
            cate_buckets=64,
            embedding_dim=4,
            mlp_units=(16, 8),
            gru_units=8,
            ring_size=6,
            attention_units=(8, 4),
            aux_units=(8, 4),
            memory_slots=3,
            controller_units=8,
            miu_units=8,
        )
        values.update(overrides)
        return cls(**values)

    def embedding_dim_for(self, model: str) -> int:
        if self.embedding_dim is not None:
            return int(self.embedding_dim)
        return 16 if model == "mimn" else 18

    def replace(self, **overrides: Any) -> ModelConfig:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(names)}")
        values = {
            k: tuple(v) if isinstance(v, list) else v for k, v in record.items()
        }
        return cls(**values)
