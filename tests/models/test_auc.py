"""What the sequence models add: on the project's synthetic data (tf_models.data.synthetic:
clicks depend on recent, ordered behaviour and on long-ago interests), DIEN and MIMN beat the
Embedding&MLP baseline's held-out AUC by a clear margin. Trains three small models end to
end through the CLI (about 2-3 minutes on 2 cores), so it is marked slow. Figures:
docs/models.md, 'Measured: AUC against the baseline'."""

from __future__ import annotations

import json

import pytest

from tf_models.train import main as train_main

MARGIN = 0.03
SMALL = ["--size", "tiny", "--embedding_dim", "8", "--ring_size", "10", "--memory_slots", "4",
         "--learning_rate", "0.004", "--epochs", "3", "--batch_size", "128", "--max_len", "100",
         "--verbose", "0"]


@pytest.mark.slow
def test_sequence_models_beat_the_baseline(tmp_path):
    from tf_models.data.synthetic import SyntheticConfig, generate

    data = tmp_path / "data"
    generate(data, SyntheticConfig(users=800, seed=5), progress=False)
    auc = {}
    for name in ("mlp", "dien", "mimn"):
        assert train_main(["--model", name, "--data", str(data), "--out", str(tmp_path / name), *SMALL]) == 0
        auc[name] = json.loads((tmp_path / name / "metrics.json").read_text())["eval_auc"]
    print("held-out AUC", auc)
    assert auc["dien"] >= auc["mlp"] + MARGIN, auc
    assert auc["mimn"] >= auc["mlp"] + MARGIN, auc
