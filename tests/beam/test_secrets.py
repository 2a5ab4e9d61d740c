"""The Redis password reaches the Beam workers through an environment variable, never through
the pipeline Beam serialises (the pickled DoFns in its runner proto) or argv."""

from __future__ import annotations

import base64
import bz2
import zlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.portability.api import beam_runner_api_pb2

from beam_jobs import backfill
from beam_jobs.backfill import BackfillOptions, BackfillStates
from devkit.redis_server import EmbeddedRedis
from uic.store import StoreConfig, StoreError
from uic.store import connect as store_connect

from .conftest import histories, tower_states

SECRET = "s3cret-env-pw-4711"


@pytest.fixture(scope="module")
def locked_redis():
    with EmbeddedRedis(password=SECRET, ephemeral=True) as server:
        yield server


def _pipeline_bytes(options: BackfillOptions) -> bytes:
    """What Beam ships to workers: the runner API proto of the backfill pipeline, with every
    transform payload also unpacked (Beam's pickler stores DoFns compressed and base64
    encoded, so a secret inside one is not visible in the raw proto)."""
    def unpacked(payload: bytes):
        try:
            raw = base64.b64decode(payload, validate=True)
        except ValueError:
            raw = payload
        for decompress in (bz2.decompress, zlib.decompress):
            try:
                yield decompress(raw)
            except (OSError, ValueError, zlib.error):
                continue

    pipeline = beam.Pipeline()
    pipeline | BackfillStates(backfill._resolve(options))
    proto = pipeline.to_runner_api()
    parts = [proto.SerializeToString()]
    for transform in proto.components.transforms.values():
        payload = transform.spec.payload
        if transform.spec.urn == "beam:transform:pardo:v1":
            payload = beam_runner_api_pb2.ParDoPayload.FromString(payload).do_fn.payload
        parts.extend(unpacked(payload))
    return b"".join(parts)


def test_password_from_environment_stays_out_of_the_pipeline(locked_redis, tiny_exports,
                                                             events_data, tmp_path,
                                                             monkeypatch):
    path, events = events_data
    bare_url = f"redis://127.0.0.1:{locked_redis.port}/0"
    monkeypatch.setenv("UIC_TEST_REDIS_PASSWORD", SECRET)
    config = StoreConfig(url=bare_url, password_env="UIC_TEST_REDIS_PASSWORD")
    options = BackfillOptions(model="mimn", events=[str(path)], store=config,
                              saved_models=str(tiny_exports), version=1,
                              dead_letter=str(tmp_path / "dead.jsonl"))
    assert SECRET.encode() not in _pipeline_bytes(options)
    assert SECRET not in repr(config)
    # the check can fail: the same pipeline with the password in the URL carries it
    in_url = StoreConfig(url=f"redis://:{SECRET}@127.0.0.1:{locked_redis.port}/0")
    leaky = BackfillOptions(model="mimn", events=[str(path)], store=in_url,
                            saved_models=str(tiny_exports), version=1,
                            dead_letter=str(tmp_path / "dead.jsonl"))
    assert SECRET.encode() in _pipeline_bytes(leaky)

    result = backfill.run_backfill(options)
    hists = histories(events)
    assert result.totals["states_written"] == len(hists)
    stored = store_connect(config).read_states("mimn", 1, list(hists))
    expected = tower_states(tiny_exports, "mimn", 1, hists)
    for user, got in zip(hists, stored, strict=True):
        np.testing.assert_allclose(got.state, expected[user], atol=1e-5, rtol=0)


def test_missing_password_variable_is_a_clear_error(locked_redis, monkeypatch):
    monkeypatch.delenv("UIC_TEST_REDIS_PASSWORD", raising=False)
    config = StoreConfig(url=f"redis://127.0.0.1:{locked_redis.port}/0",
                         password_env="UIC_TEST_REDIS_PASSWORD")
    with pytest.raises(StoreError, match="UIC_TEST_REDIS_PASSWORD is not set"):
        config.connect()


@pytest.mark.parametrize("job", ["backfill", "stream"])
@pytest.mark.parametrize("argv", [["--redis_password", "hunter2-secret"],
                                  ["--redis_password=hunter2-secret"],
                                  ["--redis-password", "hunter2-secret"]])
def test_a_password_flag_is_refused_without_echoing_the_secret(job, argv, tmp_path, capsys):
    """Neither taken for --redis_password_env by abbreviation (which would print the secret
    as a variable name) nor passed on to Beam's pipeline options."""
    import importlib

    module = importlib.import_module(f"beam_jobs.{job}")
    common_args = ["--model", "mimn", "--saved_models", str(tmp_path),
                   "--redis_url", "redis://127.0.0.1:1/0"]
    extra = ["--events", str(tmp_path / "none.jsonl")] if job == "backfill" else []
    with pytest.raises(SystemExit) as info:
        code = module.main(common_args + extra + argv)
        raise SystemExit(code)
    assert info.value.code == 2
    out = capsys.readouterr()
    assert "hunter2-secret" not in out.out + out.err
    assert "--redis_password_env" in out.err
