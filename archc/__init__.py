"""archc: a compiler from the .arch CNN spec language to pure JAX functions (and Flax Linen / NNX modules).

    import archc
    model = archc.load("resnet50", classes=10)
    variables = model.init(seed=0)
    y = model.apply(variables, x)

The JAX-backed names below are imported lazily, so ``import archc`` (and ``archc check``) stays
fast and never imports jax.
"""
from __future__ import annotations

import importlib

__all__ = ["__version__", "load", "Model", "save_variables", "load_variables", "train", "Trainer", "TrainConfig",
           "import_weights", "predict", "detect", "segment", "export", "load_exported", "evaluate", "losses",
           "make_train_step", "train_state", "make_task", "nnx_variables", "load_nnx_variables"]

_LAZY = {
    "load": "archc.runtime.model",
    "Model": "archc.runtime.model",
    "save_variables": "archc.runtime.variables_io",
    "load_variables": "archc.runtime.variables_io",
    "train": "archc.runtime.train",
    "Trainer": "archc.runtime.train",
    "TrainConfig": "archc.runtime.train",
    "import_weights": "archc.runtime.weights",
    "predict": "archc.runtime.predict",
    "detect": "archc.detection.api",
    "segment": "archc.runtime.segment",
    "export": "archc.runtime.export",
    "load_exported": "archc.runtime.export",
    "evaluate": "archc.runtime.evaluation",
    "losses": "archc.runtime.tasks",
    "make_train_step": "archc.runtime.tasks",
    "train_state": "archc.runtime.tasks",
    "make_task": "archc.runtime.tasks",
    "nnx_variables": "archc.runtime.nnx_module",
    "load_nnx_variables": "archc.runtime.nnx_module",
}


def _installed_version() -> str:
    """The version pip installed (pyproject.toml's); a source tree that is not installed says so."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("archc")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":           # lazily: importlib.metadata costs an import for every command
        globals()[name] = _installed_version()
        return globals()[name]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'archc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + ["__version__"])


# Declaration kinds defined outside the compiler (the detection description; JAX-free) register as
# archc loads, so that every front end sees them while the compiler imports no runtime package.
from . import detection  # noqa: E402,F401
