"""The compiler: the front end (resolve, elaborate), the IR and its op registry (ops/), passes
over the IR (stats, BN folding), and lowering to a pure JAX function (lower.py; linen.py wraps it)."""
