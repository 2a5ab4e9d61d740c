"""pytest plugin: real, tiny SavedModels for integration tests of the other parts.

Fixture `tiny_exports` (session): Path to an export root holding untrained tiny
`dien` and `mimn` (tower, step, head, full) and `mlp` (all four parts too), each as
version 1 (seed 1) and version 2 (seed 2), laid out as `<root>/<model>_<part>/<version>/`.
Built once per session with `tf_models.export.export_model` (about 20-30 s on 2 cores).
Version 1 is exported as production exports are (head and full XLA-compiled in candidate
blocks); version 2 with the plain graph (`xla_block=0`), so the suites that load both go
through both serving paths and pay the XLA compile time only once.
"""

from __future__ import annotations

import pytest

TINY_MODELS = ("dien", "mimn", "mlp")
TINY_VERSIONS = (1, 2)


def build_tiny_exports(root) -> None:
    """Write the tiny exports under `root` (also usable outside pytest)."""
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    for version in TINY_VERSIONS:
        for name in TINY_MODELS:
            export_model(name, root, version, config=ModelConfig.tiny(seed=version), seed=version,
                         xla_block=None if version == 1 else 0)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_exports")
    build_tiny_exports(root)
    return root
