"""The Python API: load a compiled model, initialise, apply, save and load its variables."""
