"""Variables <-> safetensors, with flat keys like ``params/layer1.0.conv1/kernel``.

The round trip is bit-identical: arrays are written with their dtype and bytes unchanged.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

SEP = "/"


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
    """{'params': {'conv1': {'kernel': a}}} -> {'params/conv1/kernel': np.ndarray}."""
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, tree):
        if isinstance(tree, Mapping):
            for key, sub in tree.items():
                key = str(key)
                if SEP in key or not key:
                    raise ValueError(f"variable name {key!r} (under {prefix or 'the root'!r}) "
                                     f"is empty or contains {SEP!r}; it cannot be saved")
                walk(f"{prefix}{SEP}{key}" if prefix else key, sub)
        else:
            flat[prefix] = np.asarray(tree)

    walk("", variables)
    return flat


def unflatten_variables(flat: Mapping) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(SEP)
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def c_contiguous(array) -> np.ndarray:
    """``array`` as a C-contiguous numpy array, as safetensors writes it, with its shape kept
    (np.ascontiguousarray would turn a 0-d array, such as a step or sample count, into a 1-d one)."""
    return np.require(np.asarray(array), requirements="C")


def save_variables(variables: Mapping, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write ``variables`` (as returned by ``Model.init``/``Model.apply``) to a safetensors file."""
    from safetensors.numpy import save_file

    flat = {k: c_contiguous(v) for k, v in flatten_variables(variables).items()}
    save_file(flat, str(path), metadata={"format": "archc", **(metadata or {})})
    use_umask(path)


def use_umask(path) -> None:
    """Give a file archc wrote the permissions of any new file, 0666 less the umask: writers that
    go through a private temporary file (``mkstemp``, safetensors) leave it 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_variables(path: str, as_numpy: bool = False) -> dict:
    """Read a file written by ``save_variables``; arrays come back as jax arrays (numpy if
    ``as_numpy``), nested as ``{'params': {node: {name: array}}, 'batch_stats': ...}``."""
    from safetensors.numpy import load_file

    flat = load_file(str(path))
    if not as_numpy:
        import jax.numpy as jnp
        flat = {k: jnp.asarray(v) for k, v in flat.items()}
    return unflatten_variables(flat)
