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
On CPU the collectives go through gloo (jax's ``jax_cpu_collectives_implementation``).

A process that dies would leave the others blocked in the next collective; :class:`PeerWatch`
turns that into a clear message and exit status ``EXIT_PEER`` within ``peer_timeout`` seconds.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


EXIT_PEER = 4                      # exit status when another process of the run died
PEER_TIMEOUT_S = 30.0
# Set by launchers that start one process per task (srun, mpirun); jax.distributed reads the
# rest. (Not SLURM_NTASKS: an sbatch script's own shell has it too, as one process.)
CLUSTER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def cluster_size(environ=os.environ) -> int:
    """The number of processes a cluster launcher (``srun``, ``mpirun``) started, else 1."""
    for var in CLUSTER_SIZE_VARS:
        if environ.get(var, "").isdigit() and int(environ[var]) > 1:
            return int(environ[var])
    return 1


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           peer_timeout: float = PEER_TIMEOUT_S) -> "PeerWatch":
    """Multi-process setup, first thing in every process: ``jax.distributed.initialize``
    (arguments left None are read from the cluster environment: SLURM, Open MPI, Cloud TPU),
    then a :class:`PeerWatch`. Returns the watch; call its ``finished()`` when the work is done."""
    # CPU devices of several processes talk through gloo (the default since jax 0.4.3x)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # jax's own heartbeat check aborts the process from C++; ours speaks first
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               heartbeat_timeout_seconds=int(3 * peer_timeout) + 10)
    return PeerWatch(peer_timeout).start()


class PeerWatch:
    """Heartbeats through the coordinator's key-value store, on a daemon thread: every second
    each process bumps its counter and reads the others'. A peer whose counter stops for
    ``timeout`` seconds without having finished (killed, its machine gone), a peer that failed,
    or a coordinator that cannot be reached: this process prints why to stderr and exits with
    ``EXIT_PEER`` at once (its collectives could never complete)."""

    PREFIX = "archc/peer"

    def __init__(self, timeout: float = PEER_TIMEOUT_S, interval: float = 1.0, client=None,
                 me: int | None = None, count: int | None = None):
        if client is None:
            from jax._src import distributed    # the client jax.distributed.initialize made
            client = distributed.global_state.client
        self.client = client
        self.me = jax.process_index() if me is None else me
        self.count = jax.process_count() if count is None else count
        self.timeout, self.interval = float(timeout), float(interval)
        self.done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="archc-peer-watch")

    def start(self) -> "PeerWatch":
        self.client.key_value_set(f"{self.PREFIX}/beat/{self.me}", "0", allow_overwrite=True)
        self._thread.start()
        atexit.register(self.stop)           # before jax's shutdown barrier (atexit is LIFO)
        return self

    def finished(self) -> None:
        """This process's part of the run completed: the others may see it stop."""
        self.done = True

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        try:
            self.client.key_value_set(f"{self.PREFIX}/end/{self.me}",
                                      "done" if self.done else "failed", allow_overwrite=True)
        except Exception:                  # noqa: BLE001 - the coordinator may be gone already
            pass

    def _run(self) -> None:
        beats = 0
        seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.me}
        while not self._stop.wait(self.interval):
            try:
                beats += 1
                self.client.key_value_set(f"{self.PREFIX}/beat/{self.me}", str(beats),
                                          allow_overwrite=True)
                for p, (last, since) in list(seen.items()):
                    end = self._get(f"{self.PREFIX}/end/{p}")
                    if end == "done":
                        del seen[p]
                    elif end == "failed":
                        self.abort(f"process {p} of {self.count} failed (see its output)")
                    else:
                        beat = self._get(f"{self.PREFIX}/beat/{p}")
                        now = time.monotonic()
                        if beat != last:
                            seen[p] = (beat, now)
                        elif now - since > self.timeout:
                            self.abort(f"process {p} of {self.count} stopped responding "
                                        f"{now - since:.0f} s ago (killed, or its machine is "
                                        f"down)")
            except Exception as e:         # noqa: BLE001 - an RPC to a dead coordinator
                if self._stop.is_set():
                    return
                self.abort(f"lost the coordinator (process 0): {str(e).splitlines()[0]}")

    def _get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as e:             # noqa: BLE001 - jax raises one type for all errors
            if "NOT_FOUND" in str(e):
                return None
            raise

    def abort(self, why: str) -> None:
        """Say why on stderr and exit with EXIT_PEER now: jax's shutdown would wait for the
        dead process."""
        print(f"error: process {self.me}: {why}; stopping this process too. Resume the run "
              f"with --resume once every process can start.", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER)


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


def scalar(a) -> float:
    """A (replicated, possibly multi-host) scalar -> float, from the local copy."""
    if isinstance(a, jax.Array):
        a.block_until_ready()     # waits without the GIL: PeerWatch runs meanwhile
        if not a.is_fully_addressable:
            a = a.addressable_data(0)
    return float(a)


def to_host(tree):
    """A pytree of (possibly replicated, multi-host) arrays -> numpy, from the local copy."""
    def get(a):
        if isinstance(a, jax.Array):
            if not a.is_fully_addressable:
                a = a.addressable_data(0)
            return np.asarray(jax.device_get(a))
        return np.asarray(a)
    return jax.tree_util.tree_map(get, tree)
