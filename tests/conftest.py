import os

# Parity tests compare float32 results: pin matmul precision where JAX is used.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
