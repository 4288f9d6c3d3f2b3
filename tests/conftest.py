import os
import tempfile

import pytest

# Parity tests compare float32 results: pin matmul precision where JAX is used (this environment
# variable reaches the CLI subprocesses; in-process tests use the highest_precision fixture).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# `--backend auto`'s measured choices (runtime/backend_choice.py) go to a fresh folder per test
# process, not the user's ~/.cache: a run neither reads a developer's earlier choices nor leaves any.
os.environ.setdefault("ARCHC_CACHE_DIR", tempfile.mkdtemp(prefix="archc-test-cache-"))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the slow tier: the sweeps over every built-in (see README)")


def pytest_collection_modifyitems(config, items):
    # The default tier keeps the whole suite well under 30 minutes on 2 cores; the slow tier
    # (`pytest -n 2 --slow`) runs every built-in through the sweeps marked slow.
    if config.getoption("--slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def highest_precision():
    """Full float32 matmul precision for one test; the previous setting is restored after it."""
    import jax
    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    yield
    jax.config.update("jax_default_matmul_precision", old)
