"""Root pytest configuration. Shared fixtures live in one plugin module per area:

* tests/fixtures_redis.py  - a real redis-server per test session, a clean database per test
* tests/fixtures_models.py - tiny DIEN/MIMN/MLP exports (real SavedModels) for integration tests
* tests/fixtures_server.py - the embedded TF Serving-compatible model server as a subprocess
* tests/fixtures_processes.py - stops, at the end of the session, whatever the tests started
  and left running (a test ended early by pytest-timeout leaves its servers and jobs)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = [
    "tests.fixtures_redis",
    "tests.fixtures_models",
    "tests.fixtures_server",
    "tests.fixtures_processes",
]


def pytest_configure(config):
    # With `-n 2 --dist loadfile`, xdist hands out whole files, by default the files with the
    # most tests first; the few long end-to-end files (demo, soak, AUC) have one or two tests
    # each, so they started last and ran alone at the end. Keep the order below instead.
    if getattr(config.option, "loadscopereorder", None):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """Files holding a `slow` test run first (each worker starts on one while the short files
    fill in around it), the others in their usual order."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
