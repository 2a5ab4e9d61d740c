"""FLOP estimates follow the configuration they are computed from."""

from bench.flops import full_flops, gru_step, head_flops, step_flops
from tf_models.config import ModelConfig


def test_dien_head_scales_with_candidates_and_ring():
    cfg = ModelConfig().to_dict()
    one, hundred = head_flops("dien", cfg, 1), head_flops("dien", cfg, 100)
    per_user = hundred - 100 * (hundred - head_flops("dien", cfg, 99))
    assert hundred - per_user == 100 * (one - per_user)
    bigger_ring = head_flops("dien", {**cfg, "ring_size": 100}, 100)
    assert bigger_ring > 1.9 * hundred
    # the AUGRU over the K ring states alone, per candidate
    assert hundred > 100 * cfg["ring_size"] * gru_step(cfg["gru_units"], cfg["gru_units"])


def test_full_adds_one_step_per_behaviour_and_the_head_does_not_depend_on_length():
    for model in ("dien", "mimn"):
        cfg = ModelConfig().to_dict()
        assert full_flops(model, cfg, 1000, 100) - full_flops(model, cfg, 200, 100) \
            == 800 * step_flops(model, cfg)
        assert full_flops(model, cfg, 0, 100) == head_flops(model, cfg, 100)


def test_tiny_config_is_cheaper_than_paper_size():
    for model in ("dien", "mimn"):
        assert head_flops(model, ModelConfig.tiny().to_dict(), 100) \
            < head_flops(model, ModelConfig().to_dict(), 100)
