"""The training and export CLIs: outputs on disk, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest

from tf_models.export import export_model
from tf_models.export import main as export_main
from tf_models.train import main as train_main
from uic.contract import PARTS, export_dir


def test_train_writes_metrics_and_weights(tiny_runs):
    for name, run in tiny_runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["model"] == name
        assert 0.0 <= metrics["eval_auc"] <= 1.0
        assert metrics["train_examples"] > metrics["eval_examples"] > 0
        assert (run / "model.weights.h5").is_file() and (run / "run.json").is_file()


def test_export_cli_writes_all_parts(tiny_saved):
    for name in ("dien", "mimn", "mlp"):
        for part in PARTS:
            path = export_dir(tiny_saved, name, part, 1)
            assert (path / "saved_model.pb").is_file()
            assert (path / "assets.extra" / "uic_metadata.json").is_file()
            assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()


def _error(capsys, fn, argv):
    with pytest.raises(SystemExit) as exc:
        fn(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_train_cli_rejects_bad_input(tmp_path, capsys, drift_data):
    err = _error(capsys, train_main, ["--model", "dien", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert "events.jsonl not found" in err
    err = _error(capsys, train_main, ["--model", "din", "--data", str(drift_data), "--out", str(tmp_path / "r")])
    assert "invalid choice" in err
    err = _error(capsys, train_main, ["--model", "dien", "--data", str(drift_data), "--out", str(tmp_path / "r"), "--max_len", "0"])
    assert "--max_len must be >= 1" in err
    err = _error(capsys, train_main, ["--model", "dien", "--data", str(drift_data), "--out", str(tmp_path / "r"), "--eval_fraction", "1.5"])
    assert "--eval_fraction" in err


def test_export_cli_rejects_bad_input(tmp_path, capsys, tiny_runs, tiny_saved):
    err = _error(capsys, export_main, ["--run", str(tmp_path / "missing"), "--out", str(tmp_path), "--version", "1"])
    assert "is not a training run" in err
    err = _error(capsys, export_main, ["--run", str(tiny_runs["mlp"]), "--out", str(tmp_path), "--version", "0"])
    assert "--version must be a positive integer" in err
    err = _error(capsys, export_main, ["--run", str(tiny_runs["mlp"]), "--out", str(tiny_saved), "--version", "1"])
    assert "already exported" in err
    err = _error(capsys, export_main, ["--run", str(tiny_runs["mlp"]), "--out", str(tmp_path), "--version", "1", "--parts", "head,body"])
    assert "unknown part" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    (tmp_path / "bad" / "model.weights.h5").write_text("")
    err = _error(capsys, export_main, ["--run", str(tmp_path / "bad"), "--out", str(tmp_path), "--version", "1"])
    assert "corrupt" in err


def test_export_model_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        export_model("din", tmp_path, 1)
    with pytest.raises(ValueError, match="version must be a positive integer"):
        export_model("mlp", tmp_path, 0)

