"""Data parallelism with ``jax.sharding``: a 1-D mesh over the batch axis, parameters and
optimizer state replicated, every batch split across the devices.

One process, several local devices (GPUs, TPU cores, or CPU devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``): nothing to do, ``archc train`` uses all
local devices (``--devices N`` for fewer). The jitted step is written for one global batch; XLA
partitions it over the mesh (GSPMD), so gradients are averaged and BatchNorm statistics are
computed over the whole global batch by cross-device reductions. The loss trajectory therefore
matches a one-device run with the same global batch up to float summation order.

Several hosts: call :func:`initialize_distributed` (``jax.distributed.initialize``) in every
process before anything else touches JAX; ``jax.devices()`` then lists the devices of all hosts
and the mesh spans them. Each process loads only its slice of every global batch
(``Loader(..., shard=(jax.process_index(), jax.process_count()))``), assembled into one global
array with ``jax.make_array_from_process_local_data``; only process 0 writes checkpoints.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


def initialize_distributed(**kwargs) -> None:
    """Multi-host setup: ``jax.distributed.initialize(coordinator_address=..., num_processes=...,
    process_id=...)`` (all arguments optional on Cloud TPU and under SLURM/Open MPI, where JAX
    detects them). Call once per process, first thing."""
    jax.distributed.initialize(**kwargs)


class DataParallel:
    """A batch-axis mesh over ``devices`` (default: all devices of all processes; an int: the
    first N, single-process only)."""

    def __init__(self, devices: int | list | None = None):
        all_devices = jax.devices()
        if devices is None:
            devs = all_devices
        elif isinstance(devices, int):
            if devices < 1 or devices > len(all_devices):
                raise ValueError(f"asked for {devices} devices; {len(all_devices)} available "
                                 f"({all_devices[0].platform})")
            if devices < len(all_devices) and jax.process_count() > 1:
                raise ValueError("a subset of devices is only supported in a single process")
            devs = all_devices[:devices]
        else:
            devs = list(devices)
        self.devices = devs
        self.mesh = Mesh(np.array(devs), (AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    def replicate(self, tree):
        """Put a pytree (host arrays, the same on every process) on every device."""
        return jax.device_put(tree, self.replicated)

    def shard_batch(self, array: np.ndarray) -> jax.Array:
        """This process's part of a global batch -> one global array split over the mesh."""
        if self.process_count == 1:
            return jax.device_put(array, self.batch_sharding)
        return jax.make_array_from_process_local_data(self.batch_sharding, array)


def to_host(tree):
    """A pytree of (possibly replicated, multi-host) arrays -> numpy, from the local copy."""
    def get(a):
        if isinstance(a, jax.Array):
            if not a.is_fully_addressable:
                a = a.addressable_data(0)
            return np.asarray(jax.device_get(a))
        return np.asarray(a)
    return jax.tree_util.tree_map(get, tree)
