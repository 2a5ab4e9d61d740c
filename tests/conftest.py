"""Root pytest configuration. Shared fixtures live in one plugin module per area:

* tests/fixtures_redis.py  - a real redis-server per test session, a clean database per test
* tests/fixtures_models.py - tiny DIEN/MIMN/MLP exports (real SavedModels) for integration tests
* tests/fixtures_server.py - the embedded TF Serving-compatible model server as a subprocess
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = [
    "tests.fixtures_redis",
    "tests.fixtures_models",
    "tests.fixtures_server",
]
