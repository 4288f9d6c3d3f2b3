"""IR, passes over it, and lowering to Flax."""
