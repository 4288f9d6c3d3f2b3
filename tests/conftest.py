import os

import pytest

# Parity tests compare float32 results: pin matmul precision where JAX is used (this environment
# variable reaches the CLI subprocesses; in-process tests use the highest_precision fixture).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")


@pytest.fixture
def highest_precision():
    """Full float32 matmul precision for one test; the previous setting is restored after it."""
    import jax
    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    yield
    jax.config.update("jax_default_matmul_precision", old)
