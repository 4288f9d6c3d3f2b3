"""The resume point of a training run, kept by orbax-checkpoint under ``RUN_DIR/checkpoints``.

One checkpoint per saved step (``checkpoints/<global step>/``), three items:

* ``state``: the training state (variables, optimizer state, step) as orbax's standard pytree;
* ``data``: where the data iterator stands (JSON: the epoch, and the batch inside it);
* ``progress``: the epoch count, the history of per-epoch metrics, and inside an epoch the
  running sums so far (JSON).

orbax writes a checkpoint to a temporary folder and renames it when complete (a killed run leaves
the previous one intact), saves in the background while training goes on, and keeps the latest
checkpoint and the best one by the validation score (``LatestN`` + ``BestN``). Only process 0
of a multi-process run writes (its state is replicated: every process holds the same values).
"""
from __future__ import annotations

from pathlib import Path

FOLDER = "checkpoints"
ITEMS = ("state", "data", "progress")


def _ocp():
    import orbax.checkpoint as ocp
    return ocp


def checkpoints_of(run_dir: Path) -> Path:
    return Path(run_dir).resolve() / FOLDER


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint (orbax's unfinished ones are temporary
    folders it ignores)."""
    folder = checkpoints_of(run_dir)
    return folder.is_dir() and any(p.name.isdigit() and p.is_dir() for p in folder.iterdir())


def manager(run_dir: Path, *, writes: bool = True, process: int = 0):
    """An orbax ``CheckpointManager`` for ``run_dir``: the latest checkpoint and the best by the
    ``score`` metric are kept, saves are asynchronous. Only ``process`` takes part (the writer
    is process 0; every process reads for itself when resuming)."""
    ocp = _ocp()
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=1),
            # the first of equal scores, as best.safetensors
            policies.BestN(get_metric_fn=lambda m: (m["score"], -m["step"]), n=1,
                           keep_checkpoints_without_metrics=False)]),
        enable_async_checkpointing=True,
        cleanup_tmp_directories=writes,      # what a killed save left behind
        create=False,       # made below: orbax cannot with active_processes
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=process,
                                                                         active_processes={process}),
    )
    if writes:
        checkpoints_of(run_dir).mkdir(parents=True, exist_ok=True)
    return ocp.CheckpointManager(checkpoints_of(run_dir), options=options, item_names=ITEMS)


def save(mngr, step: int, state, data: dict, progress: dict, score: float | None = None) -> None:
    """Start saving checkpoint ``step`` (host arrays; orbax finishes writing in the background).
    ``score``: the validation score of an epoch's end (higher is better), for the best one."""
    ocp = _ocp()
    mngr.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
        progress=ocp.args.JsonSave(progress)),
        metrics=None if score is None else {"score": float(score), "step": int(step)}, force=True)


def restore(mngr, template=None, step: int | None = None) -> tuple[object, dict, dict]:
    """``(state, data, progress)`` of checkpoint ``step`` (default: the latest). ``template``: a
    state of the same structure (numpy), whose shapes and dtypes the restored leaves take."""
    import jax
    import numpy as np
    ocp = _ocp()
    step = mngr.latest_step() if step is None else step
    if template is not None:          # orbax takes arrays, not numpy scalars
        template = jax.tree_util.tree_map(np.asarray, template)
    got = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), data=ocp.args.JsonRestore(),
        progress=ocp.args.JsonRestore()))
    return got["state"], dict(got["data"]), dict(got["progress"])


def read_latest(run_dir: Path) -> tuple[int, object, dict, dict]:
    """``(step, state, data, progress)`` of a run's latest checkpoint, without a template (for
    inspecting a run)."""
    mngr = manager(run_dir, writes=False)
    try:
        step = mngr.latest_step()
        return (step, *restore(mngr, step=step))
    finally:
        mngr.close()
