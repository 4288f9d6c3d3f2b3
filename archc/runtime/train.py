"""Training and fine-tuning: ``archc train`` and ``archc.train(...)``.

    result = archc.train("lenet5", data="digits/", out="runs/lenet", epochs=10,
                         optimizer="adamw", lr=3e-3)
    result = archc.train("cifar_resnet_v1", data="shapes/", out="runs/ft", classes=5,
                         weights="pretrained.safetensors", freeze_all_but_head=True)
    result = archc.train(resume="runs/lenet")          # after a crash: same data order, same result

A run directory holds ``config.json`` (every option: what ``--resume`` reads),
``checkpoints/`` (orbax-checkpoint: variables, optimizer state, the data iterator's position,
history: the resume point; runtime/run_state.py), ``last.safetensors`` and
``best.safetensors`` (variables only, readable by ``archc.load_variables``), ``metrics.json``
and ``curves.png``. Checkpoints are written by orbax to a temporary folder and renamed, the
other files to a temporary name and renamed, so a killed run leaves nothing half-written.

See docs/training.md.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import pipeline as P
from . import run_state
from .data import AUGMENTATIONS, BAD_DATA, ArrayData, DataError, Loader
from .logits import logits_node
from .tasks import TaskError, make_eval_step, make_task, make_train_step, train_state

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")
BN_MODES = ("auto", "update", "frozen")
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3, "rmsprop": 0.045}
# the resume point of runs written before orbax kept it
LEGACY_STATE = "train_state.safetensors"
# where the data iterator stands inside an epoch: batches done, grain's iterator state
DATA_POSITION = ("batch", "iterator")

# Testing hooks: os._exit right after this global step (simulates a killed process); wait
# after this step (its checkpoint, if due, written) until killed.
CRASH_ENV = "ARCHC_TRAIN_CRASH_AT_STEP"
HOLD_ENV = "ARCHC_TRAIN_HOLD_AT_STEP"


class TrainError(ValueError):
    """A user error in the training options or run directory (CLI: message, exit status 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept (CLI: exit status 3)."""

    def __init__(self, message: str, step: int, epoch: int):
        super().__init__(message)
        self.step, self.epoch = step, epoch


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every option of a run; saved as ``RUN_DIR/config.json`` and read back by resume."""

    spec: str | None = None               # built-in name or .arch path
    data: str | None = None               # image folder (None: arrays given to Trainer)
    out: str | None = None                # run directory
    epochs: int = 10
    batch: int = 32                       # global batch (over all devices)
    lr: float | None = None               # default per optimizer: DEFAULT_LR
    optimizer: str | None = None          # sgd (momentum) | adamw | rmsprop (Inception v3's); None:
                                          # the task's (classification sgd, segmentation adamw)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0             # kernels only; AdamW decoupled, SGD/RMSProp as L2
    label_smoothing: float = 0.0
    schedule: str = "constant"            # constant | step | cosine
    warmup_epochs: float = 0.0            # linear warm-up from 0
    step_epochs: int = 30                 # step schedule: multiply by gamma every step_epochs...
    gamma: float = 0.1
    milestones: list | None = None        # ...or at these epochs
    clip_norm: float | None = None        # clip gradients by global norm
    accumulate: int = 1                   # gradient accumulation: micro-batches per update
    bf16: bool = False                    # bf16 compute, f32 params and optimizer state
    remat: bool = False                   # recompute all but conv/matmul outputs in backward
    seed: int = 0                         # init, data order, augmentation, dropout
    params: dict = field(default_factory=dict)    # family parameter overrides
    input_shape: list | None = None       # [H, W, C] override
    classes: int | None = None            # new classifier head with K classes
    weights: str | None = None            # initial weights (transfer learning)
    weights_from: str = "archc"           # their format
    weights_prefix: str | None = None     # a --from checkpoint of a part's network: that part's label
    freeze: list = field(default_factory=list)    # node-name patterns ('layer1.*', '!head.*')
    freeze_all_but_head: bool = False
    fresh_layers: list | None = None      # filled in: the layers --weights did not initialise
    lr_mult: dict = field(default_factory=dict)   # pattern -> learning-rate factor
    bn: str = "auto"                      # update | frozen (inference mode) | auto
    val_split: float | None = None        # fraction held out when there is no val/ folder
    normalize: str | None = None          # a preprocess mode (pipeline.STATISTICS) or MEAN/STD; None: as
                                          # the network declares, else as the --weights file records, else unit
    augment: str = "auto"                 # auto (by input size) | imagenet | none: data.AUGMENTATIONS
    flip: bool | None = None              # None: as the recipe says; the run saves what it chose
    crop_scale: list | None = None        # [lo, hi] area fraction; None: as the recipe says
    workers: int = 0                      # decoding threads per batch
    prefetch: int = 2                     # batches decoded ahead on a background thread
    devices: int | None = None            # data parallel over N local devices (default all)
    progress: bool = True
    class_names: list | None = None       # filled in from the data
    task: str | None = None               # classification | segmentation | detection; None: from
                                          # the network's outputs (runtime/tasks.py)
    log_every: int = 50                   # steps between host syncs (progress, NaN check)
    save_every: int = 0                   # also checkpoint every N steps (0: at epoch ends only)...
    save_every_s: float = 600.0           # ...and when this many seconds passed since the last
    on_bad_data: str = "stop"             # an unreadable image: stop (naming them) | skip
    val: str | None = None                # a separate validation set (a detector's val.json)
    given: list | None = None             # the options the user set (the rest: a task's recipe)
    loss: str | None = None               # segmentation: ce (default) | weighted (U-Net) | dice

    def __post_init__(self):
        if isinstance(self.augment, bool):         # augment=False, and the configs of older runs
            self.augment = "auto" if self.augment else "none"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TrainError(f"unknown training options: {', '.join(unknown)}")
        return cls(**d)

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise TrainError(msg)
        need(self.optimizer is None or self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
             f"got {self.optimizer!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}")
        need(self.bn in BN_MODES, f"bn must be one of {', '.join(BN_MODES)}")
        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be a positive integer")
        need(isinstance(self.batch, int) and self.batch >= 1, "batch must be a positive integer")
        need(self.lr is None or self.lr > 0, "the learning rate must be positive")
        need(self.accumulate >= 1, "accumulate must be at least 1")
        need(isinstance(self.log_every, int) and self.log_every >= 1, "log_every must be a positive integer")
        need(isinstance(self.save_every, int) and self.save_every >= 0, "save_every must be a non-negative integer")
        need(self.save_every_s > 0, "save_every_s must be positive")
        need(self.on_bad_data in BAD_DATA, f"on_bad_data must be one of {', '.join(BAD_DATA)}")
        need(0.0 <= self.label_smoothing < 1.0, "label smoothing must be in [0, 1)")
        need(self.weight_decay >= 0, "weight decay must be non-negative")
        need(self.classes is None or self.classes >= 1, "classes must be positive")
        need(self.warmup_epochs >= 0, "warm-up must be non-negative")
        need(self.augment in AUGMENTATIONS,
             f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            need(0 < lo <= hi <= 1, f"crop scale must satisfy 0 < lo <= hi <= 1, got {lo},{hi}")
        for p, m in self.lr_mult.items():
            need(isinstance(m, (int, float)) and m >= 0, f"lr multiplier for {p!r} must be >= 0")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer or "sgd"]


@dataclass
class TrainResult:
    run_dir: Path | None
    metrics: dict                 # as metrics.json
    variables: dict               # final (last epoch) variables, numpy
    classes: list
    step_losses: list             # training loss of every step run in this process

    @property
    def best_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "best.safetensors"


# --------------------------------------------------------------------------------------------
# Graph helpers: logits, the classifier head, name patterns
# --------------------------------------------------------------------------------------------
def param_nodes(model) -> list[str]:
    """The nodes with trainable weights, in graph order, as the model's variables say (so every
    op with parameters counts, ``l2norm``'s scale included)."""
    return list(dict.fromkeys(v.node for v in model.variable_specs if v.collection == "params"))


def head_nodes(model, outputs: Sequence[str] | None = None) -> list[str]:
    """The classifier: the first parameterised nodes met walking back from the logits
    (``head.fc1`` in ResNet, ``classifier.conv1`` in SqueezeNet), or from each of ``outputs``
    (a segmenter's ``out`` and ``aux``: both final convs are new for a new class count)."""
    graph, weighted = model.graph, set(param_nodes(model))
    seen, stack, head = set(), list(outputs or [logits_node(graph)]), []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.nodes[name]
        if name in weighted:
            head.append(name)
        else:
            stack.extend(node.inputs)
    return sorted(head, key=list(graph.nodes).index)


def feature_node(model) -> str:
    """The input of the classifier, before any flatten/dropout: what a linear probe sees."""
    graph, head = model.graph, head_nodes(model)
    if not head:
        raise TrainError(f"{graph.name}: found no classifier layer before the output")
    name = graph.nodes[head[0]].inputs[0]
    while graph.nodes[name].op in ("flatten", "dropout", "identity") and graph.nodes[name].inputs:
        name = graph.nodes[name].inputs[0]
    return name


def summarize_nodes(chosen: Sequence[str], names: Sequence[str], limit: int = 12) -> str:
    """Node names for a report, a whole stage by its name (``layer1`` for all of
    ``layer1.*``): ``stem, layer1, layer2.0.conv1, head.fc1``."""
    chosen_set, parts = set(chosen), []
    for name in names:
        if name not in chosen_set:
            continue
        stage = name.split(".")[0]
        members = [n for n in names if n == stage or n.startswith(stage + ".")]
        item = stage if len(members) > 1 and chosen_set.issuperset(members) else name
        if item not in parts:
            parts.append(item)
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".") or name == pattern


def select(patterns: Sequence[str], names: Sequence[str], what: str = "--freeze") -> set:
    """Nodes selected by ``patterns``: globs on node names (``layer1.*``, ``*.bn?``); a plain
    stage or block name selects everything inside it (``layer1``); ``!PAT`` selects every node
    that PAT does not match. Comma-separated lists are accepted. A pattern that selects no
    node is an error (with close names)."""
    chosen: set = set()
    for entry in patterns:
        for pat in (p.strip() for p in str(entry).split(",")):
            if not pat:
                raise TrainError(f"{what}: empty pattern")
            negate = pat.startswith("!")
            core = pat[1:].strip() if negate else pat
            if not core:
                raise TrainError(f"{what}: {pat!r} negates nothing")
            hit = {n for n in names if _matches(core, n)}
            if not hit:
                import difflib
                stages = sorted({n.split(".")[0] for n in names})
                close = difflib.get_close_matches(core, list(stages) + list(names), n=4, cutoff=0.5)
                hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else
                        f"; the stages are {', '.join(stages[:12])}")
                raise TrainError(f"{what}: pattern {core!r} matches no layer with weights{hint}")
            chosen |= (set(names) - hit) if negate else hit
    return chosen


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def recorded_normalization(meta: Mapping | None) -> dict | None:
    """The normalisation entries (``mode``, ``mean``, ``std``) of the pipeline recorded in a
    weights file (``archc.preprocess``, written by ``archc import`` and ``archc train``; the
    ``normalize`` name of runs written before it), or None."""
    from .predict import recorded_preprocess
    if not meta:
        return None
    try:
        if recorded_preprocess(meta):
            return _normalization_of(P.pipeline(recorded_preprocess(meta)))
        return P.parse_normalize(meta["normalize"]) if meta.get("normalize") else None
    except P.PipelineError:
        return None


def _normalization_of(spec: dict) -> dict:
    return {"mode": spec["mode"], "mean": spec.get("mean"), "std": spec.get("std")}


def normalize_option(norm: dict) -> str:
    """A normalisation as ``--normalize`` spells it (what config.json keeps): a mode, or
    MEAN/STD in [0, 1] units."""
    if norm.get("mean") is None and norm.get("std") is None:
        return norm["mode"]
    mean, std, _ = P.statistics(norm, 3)
    return ",".join(f"{v:g}" for v in mean) + "/" + ",".join(f"{v:g}" for v in std)


def read_weights(path: str, source: str = "archc", model=None,
                 prefix: str | None = None) -> tuple[dict, dict | None, list]:
    """``(variables, normalisation)`` from ``path``. ``source='archc'``: an archc safetensors
    file (``archc build --out``, ``archc import``, ``archc train``); ``'torchvision'``,
    ``'timm'``, ``'keras'``: a checkpoint of that library, mapped by name with
    ``archc.runtime.weights.match_weights`` — tensors that do not fit (a head of another size)
    are left out here, not an error. ``prefix``: the checkpoint is of the network of the part of
    that label (``trunk: resnet18(until=layer4)``), mapped into it as ``archc import --prefix``
    does. The normalisation is the one the weights expect (``mode``, ``mean``, ``std`` of
    runtime/pipeline.py), when the file says. Third: the checkpoint's tensors the network has no
    place for (``--from``; an archc file's extra tensors show in ``transfer``'s ``unused``)."""
    p = Path(path)
    if not p.is_file():
        raise TrainError(f"weights file {path} does not exist")
    if prefix is not None and source in (None, "", "archc"):
        raise TrainError("--prefix maps a torchvision, timm or Keras checkpoint into a part: give its --from "
                         "(an archc weights file names every variable already)")
    if source in (None, "", "archc"):
        from safetensors import SafetensorError, safe_open
        from .variables_io import unflatten_variables
        try:
            with safe_open(str(p), "numpy") as f:
                meta = f.metadata() or {}
                flat = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise TrainError(f"cannot read weights {path} as an archc .safetensors file ({e}); "
                             f"for a torchvision, timm or Keras checkpoint pass --from SOURCE") from None
        return unflatten_variables(flat), recorded_normalization(meta), []
    try:
        from .weights import WeightsError, match_weights
        from .checkpoint import CheckpointError
    except ImportError:
        raise TrainError(f"--from {source}: this build cannot import {source} weights; "
                         f"convert them to an archc .safetensors file first") from None
    try:
        report, assignments, rules = match_weights(model, str(p), source=source, prefix=prefix)
    except (WeightsError, CheckpointError) as e:
        raise TrainError(f"--weights {path} --from {source}: {e}") from None
    if prefix is not None and not report.ok:        # a part is strict, as archc import --prefix
        raise TrainError(f"--weights {path} --from {source} --prefix {prefix}: {report.render()}")
    variables: dict = {}
    for (coll, node, leaf), value in assignments.items():
        variables.setdefault(coll, {}).setdefault(node, {})[leaf] = value
    return variables, declared_normalization(model), [key for key, *_ in report.unexpected]


def declared_normalization(model) -> dict | None:
    """The normalisation entries (``mode``, ``mean``, ``std``) of the input pipeline the network
    declares in its .arch file (``preprocess(mode=…)``), or None."""
    from .predict import declared_preprocess
    decl = declared_preprocess(model) if model is not None else None
    return _normalization_of(decl) if decl is not None else None


def transfer(fresh: dict, loaded: Mapping, reinit: set = frozenset()) -> tuple[dict, dict]:
    """``fresh`` variables with every tensor of ``loaded`` of the same name and shape copied
    in, except nodes in ``reinit`` (a new head). Returns (variables, report)."""
    out: dict = {}
    report = {"loaded": 0, "reinitialised": [], "shape_mismatch": [], "missing": [], "unused": [],
              "fresh": []}
    for coll, nodes in fresh.items():
        out[coll] = {}
        for node, leaves in nodes.items():
            out[coll][node] = {}
            for leaf, value in leaves.items():
                src = loaded.get(coll, {}).get(node, {}).get(leaf)
                key = f"{node}/{leaf}" if coll == "params" else f"{coll}/{node}/{leaf}"
                if node in reinit:
                    out[coll][node][leaf] = value
                    report["reinitialised"].append(key)
                elif src is None:
                    out[coll][node][leaf] = value
                    report["missing"].append(key)
                elif tuple(np.shape(src)) != tuple(value.shape):
                    out[coll][node][leaf] = value
                    report["shape_mismatch"].append(
                        f"{key} {tuple(np.shape(src))} -> {tuple(value.shape)}")
                else:
                    out[coll][node][leaf] = np.asarray(src, dtype=np.asarray(value).dtype)
                    report["loaded"] += 1
                    continue
                if coll == "params" and node not in report["fresh"]:
                    report["fresh"].append(node)
    for coll, nodes in loaded.items():
        for node, leaves in nodes.items() if isinstance(nodes, Mapping) else ():
            for leaf in leaves:
                if leaf not in fresh.get(coll, {}).get(node, {}):
                    report["unused"].append(f"{coll}/{node}/{leaf}")
    return out, report


# --------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------
def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Learning rate as a function of the update count (optax schedule)."""
    import optax
    lr = cfg.learning_rate
    spe = max(1, steps_per_epoch)
    total = cfg.epochs * spe
    warm = int(round(cfg.warmup_epochs * spe))
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps=max(1, total - warm))
    else:
        if cfg.milestones:
            bounds = {int(m) * spe - warm: cfg.gamma for m in cfg.milestones}
            main = optax.piecewise_constant_schedule(lr, {b: g for b, g in bounds.items() if b > 0})
        else:
            main = optax.exponential_decay(lr, transition_steps=cfg.step_epochs * spe,
                                           decay_rate=cfg.gamma, staircase=True)
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(cfg: TrainConfig, schedule, labels: dict | None, groups: dict):
    """optax transformation for the trainable parameters. ``groups``: label -> lr factor;
    ``labels``: the per-parameter labels (None: one group)."""
    import jax
    import optax

    def decay_mask(params):
        return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)

    name = cfg.optimizer or "sgd"        # a config no Trainer has resolved: classification's

    def one(factor: float):
        sched = schedule if factor == 1.0 else (lambda c, f=factor: schedule(c) * f)
        parts = []
        if name == "adamw":
            parts.append(optax.adamw(sched, weight_decay=cfg.weight_decay, mask=decay_mask))
        else:
            if cfg.weight_decay:
                parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
            if name == "sgd":
                parts.append(optax.sgd(sched, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
            else:   # Inception v3 (TF1 RMSPropOptimizer): decay 0.9, momentum 0.9, eps 1.0, ms from 1
                parts.append(optax.rmsprop(sched, decay=0.9, eps=1.0, initial_scale=1.0,
                                           momentum=cfg.momentum or None))
        return optax.chain(*parts) if len(parts) > 1 else parts[0]

    if labels is None:
        tx = one(1.0)
    else:
        tx = optax.multi_transform({g: one(f) for g, f in groups.items()}, labels)
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if cfg.accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate)
    return tx


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name, then rename: a reader (or a kill) never meets a
    half-written file. (The resume point itself is orbax's, atomic on its own.)"""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _replace(path, (json.dumps(obj, indent=1) + "\n").encode())


def _write_weights(path: Path, variables: Mapping, metadata: dict) -> None:
    from safetensors.numpy import save

    from .variables_io import c_contiguous, flatten_variables
    flat = {k: c_contiguous(v) for k, v in flatten_variables(variables).items()}
    _replace(path, save(flat, metadata={k: str(v) for k, v in metadata.items()}))


def plot_curves(metrics: dict, path: Path, score: str = "accuracy") -> None:
    """Loss and the task's score (classification: accuracy) per epoch (matplotlib, Agg canvas;
    the global backend is untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    epochs = metrics["epoch"]
    for i, (key, title) in enumerate((("loss", "loss"), (score, score))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split in ("train", "val"):
            ys = metrics.get(f"{split}_{key}", [])
            pts = [(e, y) for e, y in zip(epochs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
class Progress:
    """One line per epoch; on a terminal, a tqdm bar updated at each host sync meanwhile."""

    def __init__(self, epoch: int, epochs: int, total: int, enabled: bool = True, stream=None,
                 label: str = "acc"):
        self.stream, self.label = stream or sys.stderr, label
        self.enabled = enabled
        self.prefix = f"epoch {epoch}/{epochs}"
        tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if tty:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.prefix, file=self.stream, leave=False,
                            unit="step", dynamic_ncols=True)

    def update(self, done: int, loss: float, score: float, ips: float) -> None:
        """``score``: the task's training score so far (classification: top-1, ``acc``)."""
        if self.bar is not None:
            shown = "" if score is None else f"  {self.label} {score:.4f}"     # a detector: AP on validation only
            self.bar.set_postfix_str(f"loss {loss:.4f}{shown}  {ips:,.0f} img/s", refresh=False)
            self.bar.update(done - self.bar.n)

    def close(self, text: str) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self.stream.write(f"{self.prefix}  {text}\n")
            self.stream.flush()


def _array(value):
    """A running sum read back from a checkpoint's JSON: float32 (classification's counts,
    written as floats) or int32 (a confusion matrix)."""
    a = np.asarray(value)
    return a.astype(np.float32 if a.dtype.kind == "f" else np.int32)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Builds data, model, variables, optimizer and the jitted steps from a ``TrainConfig``.

    ``train_data``/``val_data``: in-memory datasets (``ArrayData`` or ``(x, y)``) instead of
    ``config.data``. ``resume=True``: continue the run in ``config.out`` from its last
    complete epoch (its ``config.json`` should be what was passed)."""

    def __init__(self, config: TrainConfig, *, train_data=None, val_data=None,
                 resume: bool = False, log=_log):
        import jax
        self.cfg = cfg = config
        self.log = log if jax.process_index() == 0 else (lambda msg: None)   # one report per run
        cfg.validate()
        self.run_dir = Path(cfg.out) if cfg.out else None
        self.resuming = resume
        self._check_run_dir()
        self._setup_model()
        self._setup_data(train_data, val_data)
        self._setup_head()
        self._setup_variables()
        self._setup_preprocess()
        self._setup_parallel()
        self._setup_steps()

    # ---- setup ----
    def _check_run_dir(self) -> None:
        if self.run_dir is None:
            return
        started = run_state.has_checkpoint(self.run_dir)
        if (self.run_dir / LEGACY_STATE).is_file() and not started:
            # its resume point is not orbax's: restarting it would overwrite its weights
            raise TrainError(f"{self.run_dir} was written by an earlier archc (its resume point is "
                             f"{LEGACY_STATE}, which this version does not read); start a new run with "
                             f"--weights {self.run_dir / 'last.safetensors'} and another --out")
        if self.resuming:
            if not started:
                # killed before its first checkpoint: start it again, from its config.json
                self.log(f"{self.run_dir} has no checkpoint yet: starting the run again")
                self.resuming = False
        elif started:
            raise TrainError(f"{self.run_dir} already holds a training run; continue it with "
                             f"--resume {self.run_dir}, or choose another --out")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise TrainError(f"--out {self.run_dir} exists and is not a folder")

    def _setup_data(self, train_data, val_data) -> None:
        cfg = self.cfg
        as_data = lambda d: d if d is None or not isinstance(d, tuple) else ArrayData(*d)  # noqa: E731
        train_data, val_data = as_data(train_data), as_data(val_data)
        task = self.task
        if train_data is None:
            if not cfg.data:
                raise TrainError("no training data: pass --data DIR")
            try:
                train_data, split_val = task.read_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
            except TaskError as e:
                raise TrainError(str(e)) from None
            val_data = val_data if val_data is not None else split_val
        if cfg.val and val_data is None:
            try:
                val_data = task.read_eval_data(cfg.val)
            except TaskError as e:
                raise TrainError(str(e)) from None
        train_data = task.check_data(train_data, cfg.on_bad_data, self.log)
        val_data = None if val_data is None else task.check_data(val_data, cfg.on_bad_data, self.log)
        if len(train_data) == 0:
            raise DataError("the training set is empty")
        self.train_data, self.val_data = train_data, val_data
        self.classes = list(train_data.classes)
        if cfg.class_names and list(cfg.class_names) != self.classes:
            raise TrainError(f"the data's classes {self.classes[:6]} differ from the run's "
                             f"{list(cfg.class_names)[:6]}")
        cfg.class_names = self.classes
        task.classes = self.classes

    def _setup_model(self) -> None:
        """The network, and the task its outputs (or --task) call for."""
        from .model import load
        cfg = self.cfg
        if not cfg.spec:
            raise TrainError("give a network: a built-in name (lenet5) or an .arch file")
        params = dict(cfg.params or {})
        if cfg.classes is not None:
            params["classes"] = int(cfg.classes)
        self.model = model = load(cfg.spec, input_shape=tuple(cfg.input_shape) if cfg.input_shape else None,
                                  **params)
        g = model.graph
        try:
            self.task = make_task(model, cfg.task, label_smoothing=cfg.label_smoothing, loss=cfg.loss)
        except TaskError as e:
            raise TrainError(str(e)) from None
        # a two-stage detector's second input (its RoIs) is fed by its task's forward
        images = 1 + (self.task.name == "detection" and "rpn" in g.declarations)
        if len(g.inputs) != images or len(g.input_shape) != 3:
            raise TrainError(f"{g.name}: training needs one image input (HxWxC), "
                             f"the network has {len(g.inputs)} inputs")
        if cfg.optimizer is None:       # config.json keeps the choice (--resume)
            cfg.optimizer = self.task.default_optimizer

    def _setup_head(self) -> None:
        """The data's classes against the network's outputs; the head, the trainable nodes."""
        cfg, model = self.cfg, self.model
        g = model.graph
        self.logits = self.task.outputs[0]
        self.num_outputs = self.task.num_classes
        k = len(self.classes)
        if self.task.name == "detection" and k + 1 != self.num_outputs:
            raise TrainError(f"the data has {k} categories but {g.name} has {self.num_outputs - 1} classes (and the "
                             f"background): pass --param classes={k + 1}")
        if k > self.num_outputs or (cfg.classes is not None and k != self.num_outputs):
            hint = (f"pass --classes {k} for a new {k}-way head" if "classes" in g.params
                    else f"{g.name} has no 'classes' parameter: edit its final layer")
            raise TrainError(f"the data has {k} classes but {g.name} outputs {self.num_outputs}; {hint}")
        self.param_nodes = param_nodes(model)
        self.head = self.task.head_nodes(self.param_nodes) if hasattr(self.task, "head_nodes") else head_nodes(model)
        self.bn_nodes = [n.name for n in g if n.op == "bn"]
        h, w, c = g.input_shape
        if cfg.normalize is not None:               # a bad value fails before any work
            try:
                P.statistics(P.parse_normalize(cfg.normalize), c)
            except P.PipelineError as e:
                raise TrainError(str(e)) from None

    def _setup_preprocess(self) -> None:
        cfg = self.cfg
        h, w, c = self.model.graph.input_shape
        declared, recorded = declared_normalization(self.model), self.weights_normalize
        if declared and recorded and not P.same_normalization(declared, recorded, c):
            self.log(f"warning: {cfg.weights} records normalisation {P.describe(recorded)}, but "
                     f"{self.model.name} declares {P.describe(declared)}; using "
                     f"{cfg.normalize or P.describe(declared)} (--normalize chooses)")
        if cfg.normalize is None:
            # the network's declaration first: right for imported, archc-trained and fresh variables
            cfg.normalize = normalize_option(declared or recorded or {"mode": "unit"})
            if declared:
                self.log(f"normalisation: {cfg.normalize} (as {self.model.name} declares)")
            elif recorded:
                self.log(f"normalisation: {cfg.normalize} (as {cfg.weights} expects)")
        # what evaluation applies, and what the weights record for `archc predict`: a plain
        # resize to the input size, then this normalisation
        self.pipeline = P.pipeline({**P.parse_normalize(cfg.normalize), "resize": "exact",
                                    "crop": min(h, w)})
        try:
            aug = self.task.augmentation(cfg.augment, (h, w, c), cfg.crop_scale, cfg.flip)
        except (TaskError, DataError) as e:
            raise TrainError(str(e)) from None
        if not self.resuming:
            self.log(f"augmentation: {aug.describe()}")
        # saved in config.json: a resumed run keeps them whatever later defaults say
        cfg.flip = aug.flip
        cfg.crop_scale = None if aug.crop_scale is None else list(aug.crop_scale)
        # the task's per-example transforms (runtime/tasks.py): augmented, and evaluation's
        self.pre_train = self.task.transform((h, w, c), self.pipeline, aug)
        self.pre_eval = self.task.transform((h, w, c), self.pipeline)

    def _setup_variables(self) -> None:
        cfg, g = self.cfg, self.model.graph
        fresh = {c: {n: {k: np.asarray(v) for k, v in leaves.items()} for n, leaves in nodes.items()}
                 for c, nodes in self.model.init(seed=cfg.seed).items()}
        self.transfer_report = None
        self.weights_normalize = None
        if cfg.weights and not self.resuming:
            loaded, self.weights_normalize, unfit = read_weights(cfg.weights, cfg.weights_from, self.model,
                                                                 cfg.weights_prefix)
            reinit = set(self.head) if cfg.classes is not None else set()
            variables, report = transfer(fresh, loaded, reinit)
            report["unused"] += unfit
            if report["loaded"] == 0:
                raise TrainError(f"no tensor of {cfg.weights} fits {g.name} (by name and shape)")
            self.transfer_report = report
            skipped = report["reinitialised"] + report["shape_mismatch"]
            self.log(f"weights: {report['loaded']} tensors loaded from {cfg.weights}"
                     + (f"; new: {', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}"
                        if skipped else "")
                     + (f"; {len(report['missing'])} not in the file" if report["missing"] else "")
                     + (f"; {len(report['unused'])} unused" if report["unused"] else ""))
            if unfit and g.params.get("aux") is False and all(k.startswith("aux") for k in unfit):
                # torchvision's segmenters' checkpoints carry the aux head (archc import switches it on)
                self.log(f"note: the {len(unfit)} unused tensors are {cfg.weights}'s aux head: --param aux=true "
                         f"trains it too (torchvision's aux_loss: + 0.5 x its loss)")
        else:
            variables = fresh
        params = variables.get("params", {})
        frozen_nodes: set = set()
        names = [n for n in self.param_nodes if n in params]
        if cfg.freeze:
            frozen_nodes |= select(cfg.freeze, names, "--freeze")
        backbone = self.model.graph.declarations.get("backbone")
        if cfg.weights and backbone is not None:
            # a pretrained backbone: torchvision's trainable_backbone_layers (detection/finetune.py)
            from ..detection.finetune import FinetuneError, backbone_frozen
            try:
                frozen_nodes |= set(backbone_frozen(self.model, names))
            except FinetuneError as e:
                raise TrainError(str(e)) from None
            self.log(f"backbone: the last {backbone.trainable} of its {len(backbone.stages)} stages train "
                     f"(trainable_backbone_layers)" + ("; batch norm frozen" if backbone.frozen_bn else ""))
        if cfg.freeze_all_but_head:
            # the head, and every layer the weights file did not initialise (a new or misfit
            # layer left frozen would stay random)
            if self.transfer_report is not None:
                cfg.fresh_layers = list(self.transfer_report["fresh"])   # config.json: for --resume
            frozen_nodes |= set(names) - set(self.head) - set(cfg.fresh_layers or ())
        self.frozen_nodes = frozen_nodes
        self.trainable = {n: v for n, v in params.items() if n not in frozen_nodes}
        self.frozen = {n: v for n, v in params.items() if n in frozen_nodes}
        if not self.trainable:
            raise TrainError("every layer is frozen: nothing to train")
        self.batch_stats = variables.get("batch_stats", {})
        bn = cfg.bn
        if bn == "auto":
            bn = "frozen" if self.bn_nodes and all(n in frozen_nodes for n in self.bn_nodes) else "update"
            if cfg.weights and backbone is not None and backbone.frozen_bn:
                bn = "frozen"           # torchvision's FrozenBatchNorm2d under a pretrained backbone
        self.bn_mode = bn
        # per-group learning rates
        self.groups = {"base": 1.0}
        self.labels = None
        if cfg.lr_mult:
            tnames = list(self.trainable)
            label_of = {}
            for i, (pat, factor) in enumerate(cfg.lr_mult.items()):
                self.groups[f"g{i}"] = float(factor)
                for n in select([pat], tnames, "--lr-mult"):
                    label_of.setdefault(n, f"g{i}")
            self.labels = {n: {leaf: label_of.get(n, "base") for leaf in leaves}
                           for n, leaves in self.trainable.items()}
        n_train = sum(int(np.prod(v.shape)) for leaves in self.trainable.values() for v in leaves.values())
        n_frozen = sum(int(np.prod(v.shape)) for leaves in self.frozen.values() for v in leaves.values())
        self.log(f"{g.name}: {n_train:,} trainable parameters"
                 + (f", {n_frozen:,} frozen ({len(self.frozen)} layers)" if n_frozen else "")
                 + f"; batch norm {self.bn_mode}" * bool(self.bn_nodes))
        if self.frozen:
            self.log(f"  trains: {summarize_nodes(list(self.trainable), names)}")
            self.log(f"  frozen: {summarize_nodes(list(self.frozen), names)}")

    def _setup_parallel(self) -> None:
        from .parallel import DataParallel
        cfg = self.cfg
        try:
            self.dp = DataParallel(cfg.devices)
        except ValueError as e:
            raise TrainError(str(e)) from None
        batch = cfg.batch
        n = len(self.train_data)
        if n < batch:
            raise TrainError(f"the training set has {n} images, fewer than one batch of {batch}: "
                             f"lower --batch")
        if batch % self.dp.size:
            raise TrainError(f"batch {batch} does not split evenly over {self.dp.size} devices; "
                             f"use a multiple of {self.dp.size} or --devices")
        shard = (self.dp.process_index, self.dp.process_count)
        self.train_loader = Loader(self.train_data, self.pre_train, batch, train=True,
                                   seed=cfg.seed, workers=cfg.workers, prefetch=cfg.prefetch,
                                   shard=shard)
        self.val_loader = None if not self.val_data or len(self.val_data) == 0 else Loader(
            self.val_data, self.pre_eval, batch, train=False, seed=cfg.seed,
            workers=cfg.workers, prefetch=cfg.prefetch, shard=shard)
        self.steps_per_epoch = len(self.train_loader)
        self.updates_per_epoch = self.steps_per_epoch // cfg.accumulate
        if self.updates_per_epoch < 1:
            raise TrainError(f"--accumulate {cfg.accumulate} is more than the "
                             f"{self.steps_per_epoch} batches of an epoch")

    def _setup_steps(self) -> None:
        cfg = self.cfg
        if self.task.name == "detection" and not self.resuming:
            from ..detection.recipe import detection_recipe
            settings, line = detection_recipe(cfg.batch, cfg.epochs, self.updates_per_epoch, cfg.given or ())
            for k, v in settings.items():
                setattr(cfg, k, v)
            if line:
                self.log(line)
        self.schedule = make_schedule(cfg, self.updates_per_epoch)
        self.tx = make_optimizer(cfg, self.schedule, self.labels, self.groups)
        dtype = "bfloat16" if cfg.bf16 else None       # the graph's mixed-precision policy
        rep = self.dp.replicated
        self._train_step = make_train_step(self.task, self.tx, bn=self.bn_mode, dtype=dtype,
                                           remat=cfg.remat, seed=cfg.seed, sharding=rep)
        self._eval_step = make_eval_step(self.task, dtype=dtype, sharding=rep)

    def init_state(self) -> dict:
        return train_state(self.task, self.tx, {"params": {**self.frozen, **self.trainable},
                                                "batch_stats": self.batch_stats}, frozen=self.frozen)

    # ---- checkpoints ----
    def variables_of(self, host_state: dict) -> dict:
        params = {**host_state.get("frozen", self.frozen), **host_state["trainable"]}
        params = {n: params[n] for n in self.model.graph.nodes if n in params}
        out = {"params": params}
        if host_state["batch_stats"]:
            out["batch_stats"] = host_state["batch_stats"]
        return out

    def _metadata(self, epoch: int, extra: dict | None = None) -> dict:
        from .record import inference_metadata
        cfg = self.cfg
        meta = {"spec": cfg.spec, "classes": json.dumps(self.classes), "epoch": epoch,
                "normalize": cfg.normalize, "params": json.dumps(cfg.params or {}),
                "input_shape": json.dumps(list(self.model.input_shape)),
                "logits": self.logits}
        if cfg.classes is not None:
            meta["num_classes"] = cfg.classes
        # what `archc predict|evaluate|export` read: the network, its preprocessing, the names
        params = {**(cfg.params or {}), **({"classes": cfg.classes} if cfg.classes is not None else {})}
        record = self.task.record()
        meta.update(inference_metadata(self.model, spec=cfg.spec, params=params,
                                       preprocess=self.pipeline, classes=record["classes"],
                                       task=record["task"], category_ids=record.get("category_ids")))
        meta.update(extra or {})
        return meta

    def load_state(self) -> tuple[dict, int, dict, dict | None]:
        """The latest checkpoint: ``(state, epochs done, history, position)``; ``position``:
        where inside the next epoch it was taken (batches done, the epoch's sums so far), None
        at an epoch's end."""
        import jax
        mngr = run_state.manager(self.run_dir, writes=False, process=jax.process_index())
        try:
            state, data, progress = run_state.restore(mngr, self.init_state())
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise TrainError(f"{run_state.checkpoints_of(self.run_dir)}: the checkpoint does not match "
                             f"this configuration ({e})") from None
        finally:
            mngr.close()
        self.frozen = state["frozen"]
        position = None if not data["batch"] else {**data, **progress["running"]}
        return state, int(data["epoch"]), progress["history"], position

    def save_state(self, mngr, host_state: dict, epoch: int, history: dict, position: dict | None = None,
                   score: float | None = None) -> None:
        """Start saving the resume point (orbax finishes it in the background): after ``epoch``
        epochs and, inside the next one, ``position`` (as ``load_state`` returns it)."""
        position = position or {"batch": 0}
        data = {"epoch": epoch, **{k: position[k] for k in DATA_POSITION if k in position}}
        running = {k: v for k, v in position.items() if k not in DATA_POSITION}
        run_state.save(mngr, epoch * self.steps_per_epoch + data["batch"], host_state, data,
                       {"history": history, "running": running}, score)

    def _write_outputs(self, host_state: dict, epoch: int, history: dict, best: bool) -> None:
        variables = self.variables_of(host_state)
        meta = self._metadata(epoch, {"format": "archc"})
        _write_weights(self.run_dir / "last.safetensors", variables, meta)
        if best:
            _write_weights(self.run_dir / "best.safetensors", variables, meta)
        _write_json(self.run_dir / "metrics.json", history)

    def _draw_curves(self, history: dict) -> None:
        """curves.png, rewritten after every epoch (written whole: a temporary file renamed)."""
        if not history["epoch"]:
            return
        try:
            plot_curves(history, self.run_dir / "curves.png", self.task.score_name)
        except ImportError:
            self.log("curves.png not drawn: matplotlib is not installed")

    # ---- running ----
    def on_devices(self, batch: Mapping) -> dict:
        """A loader's batch (the task's dict), sharded over the devices."""
        return {k: self.dp.shard_batch(v) for k, v in batch.items()}

    def batches(self, loader, epoch: int = 0):
        """A loader's batches of ``epoch`` as the task's dicts, sharded over the devices."""
        return map(self.on_devices, loader.epoch(epoch))

    def evaluate(self, state) -> dict | None:
        """The task's validation metrics (runtime/tasks.py: the numbers ``archc evaluate`` gives)."""
        from .tasks import evaluate
        if self.val_loader is None:
            return None
        variables = {"params": {**state["frozen"], **state["trainable"]}, "batch_stats": state["batch_stats"]}
        metrics = evaluate(self.task, variables, self.batches(self.val_loader), eval_step=self._eval_step)
        if hasattr(self.task, "validate"):      # a metric over the whole set (a detector's COCO AP)
            metrics.update(self.task.validate(variables, self.val_data))
        return metrics

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory: only process 0 of a multi-process run."""
        return self.run_dir is not None and self.dp.process_index == 0

    def fit(self) -> TrainResult:
        # Ctrl-C: a SIGINT sets a flag that the loop turns into KeyboardInterrupt between steps, in
        # the main thread (the default handler's exception was lost inside the data pipeline's
        # iterator: the run went on)
        import signal
        import threading
        self._interrupted = []
        if threading.current_thread() is not threading.main_thread():
            return self._fit()
        previous = signal.signal(signal.SIGINT, lambda signum, frame: self._interrupted.append(signum))
        try:
            return self._fit()
        finally:
            signal.signal(signal.SIGINT, previous)

    def new_history(self) -> dict:
        """metrics.json's keys: per epoch the loss, the task's ``train_metrics`` and
        ``val_metrics`` (classification: ``train_accuracy``, ``val_loss``, ``val_accuracy``,
        ``val_top5``), the learning rate and speed; the best epoch by ``best_val_<score>``."""
        task = self.task
        per_epoch = (["epoch", "train_loss"] + [f"train_{k}" for k in task.train_metrics]
                     + [f"val_{k}" for k in task.val_metrics] + ["lr", "images_per_s", "time_s"])
        return {**{k: [] for k in per_epoch}, "best_epoch": None, f"best_val_{task.score_name}": None,
                "classes": self.classes}

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        history = self.new_history()
        start_epoch, position = 0, None
        if self.resuming:
            host_state, start_epoch, history, position = self.load_state()
            self.log(f"resuming {self.run_dir} after epoch {start_epoch}" + (
                f", batch {position['batch']}" if position else ""))
            if self.writes:
                _write_json(self.run_dir / "config.json", cfg.to_json())  # --epochs may have changed
                # repair outputs a kill between the checkpoint and them may have left stale
                if start_epoch and position is None:
                    self._write_outputs(host_state, start_epoch, history,
                                        best=history.get("best_epoch") == start_epoch)
            if start_epoch >= cfg.epochs:
                self.log(f"{self.run_dir}: all {cfg.epochs} epochs already done")
        else:
            host_state = self.init_state()
            if self.writes:
                _write_json(self.run_dir / "config.json", cfg.to_json())
        mngr = run_state.manager(self.run_dir) if self.writes else None
        try:
            return self._loop(mngr, host_state, start_epoch, history, position)
        finally:
            if mngr is not None:
                mngr.wait_until_finished()        # the last checkpoint complete before returning
                mngr.close()

    def _loop(self, mngr, host_state, start_epoch: int, history: dict, position) -> TrainResult:
        from .parallel import to_host
        from .tasks import add_sums
        cfg, task = self.cfg, self.task
        score_name = task.score_name
        state = self.dp.replicate(host_state)
        crash_at = int(os.environ.get(CRASH_ENV, "0") or 0)
        hold_at = int(os.environ.get(HOLD_ENV, "0") or 0)
        step_losses: list = []
        spe = self.steps_per_epoch
        last_save = time.monotonic()
        for epoch in range(start_epoch, cfg.epochs):
            progress = Progress(epoch + 1, cfg.epochs, spe,
                                enabled=cfg.progress and self.dp.process_index == 0, label=task.score_label)
            t0 = time.perf_counter()
            # the epoch's running sums: restored from a mid-epoch checkpoint, else from zero
            first_batch = position["batch"] if position else 0
            loss_sum = position["loss_sum"] if position else 0.0
            seen = first_batch * cfg.batch
            sums = self.dp.replicate({k: _array(v) for k, v in position["sums"].items()}) if position else None
            # grain's checkpointable iterator: where the checkpoint left it inside an epoch
            data = self.train_loader.iterator(epoch, position["iterator"] if position else None)
            position, pending = None, []      # device values: fetched once per log interval
            for b, batch in enumerate(map(self.on_devices, data), first_batch):
                if self._interrupted:
                    raise KeyboardInterrupt
                state, m = self._train_step(state, batch)
                pending.append(m["loss"])
                sums = add_sums(sums, {k: m[k] for k in task.train_sums})
                seen += cfg.batch
                step = epoch * spe + b + 1
                save_now = b + 1 < spe and self.writes and (
                    (cfg.save_every and step % cfg.save_every == 0) or
                    time.monotonic() - last_save >= cfg.save_every_s)
                if (len(pending) < cfg.log_every and b + 1 < spe and not save_now
                        and step not in (crash_at, hold_at)):
                    continue
                losses = [float(v) for v in to_host(pending)]       # the host sync
                first = step - len(losses) + 1
                pending = []
                for i, loss in enumerate(losses):
                    step_losses.append(loss)
                    if not math.isfinite(loss):
                        progress.close("stopped")
                        bad = first + i
                        where = (f"{self.run_dir / 'last.safetensors'} (epoch {epoch})" if epoch > 0 and
                                 self.run_dir is not None else "none (no epoch finished)")
                        raise TrainingDiverged(
                            f"the training loss became {loss} at step {bad} (epoch {epoch + 1}, batch "
                            f"{bad - epoch * spe}); stopping. Last good checkpoint: {where}. Try a lower "
                            f"--lr, --warmup or --clip-norm.", bad, epoch + 1)
                    loss_sum += loss
                if save_now:        # a mid-epoch resume point: where we are and the sums so far
                    self.save_state(mngr, to_host(state), epoch, history, {
                        "batch": b + 1, "iterator": data.get_state(), "loss_sum": loss_sum,
                        "sums": {k: np.asarray(v).tolist() for k, v in to_host(sums).items()}})
                    last_save = time.monotonic()
                dt = time.perf_counter() - t0
                progress.update(b + 1, loss_sum / (b + 1), task.summarize(to_host(sums)).get(score_name),
                                (seen - first_batch * cfg.batch) / max(dt, 1e-9))
                if step in (crash_at, hold_at) and mngr is not None:
                    mngr.wait_until_finished()        # testing: its checkpoint on disk first
                if crash_at and step == crash_at:
                    os._exit(86)
                if hold_at and step == hold_at:       # testing: wait here to be killed
                    print(f"holding at step {step}", file=sys.stderr, flush=True)
                    time.sleep(3600)
            train_time = time.perf_counter() - t0
            train_metrics = task.summarize(to_host(sums))
            val = self.evaluate(state)
            val_score = None if val is None else val[score_name]
            dt = time.perf_counter() - t0
            lr = float(self.schedule(max(0, (epoch + 1) * self.updates_per_epoch - 1)))
            row = {"epoch": epoch + 1, "train_loss": loss_sum / spe,
                   **{f"train_{k}": train_metrics[k] for k in task.train_metrics},
                   **{f"val_{k}": None if val is None else val.get(k) for k in task.val_metrics},
                   "lr": lr, "images_per_s": (seen - first_batch * cfg.batch) / max(train_time, 1e-9),
                   "time_s": dt}
            for key, v in row.items():
                history.setdefault(key, []).append(v)
            best_key = f"best_val_{score_name}"
            score = val_score if val_score is not None else -row["train_loss"]
            prev = history[best_key] if val_score is not None else (
                None if history["best_epoch"] is None else -history["train_loss"][history["best_epoch"] - 1])
            improved = prev is None or score > prev
            if improved:
                history["best_epoch"] = epoch + 1
                history[best_key] = val_score
            label = task.score_label
            text = f"loss {row['train_loss']:.4f}" + (f"  {label} {train_metrics[score_name]:.4f}"
                                                      if score_name in train_metrics else "")
            if val_score is not None:
                text += (f"  val_loss {val['loss']:.4f}" if "loss" in val else "") + f"  val_{label} {val_score:.4f}"
            text += f"  {row['images_per_s']:,.0f} img/s  {dt:.1f}s" + ("  *" if improved and val_score is not None else "")
            progress.close(text)
            if self.writes:
                host_state = to_host(state)
                self.save_state(mngr, host_state, epoch + 1, history, score=score)   # the commit point
                self._write_outputs(host_state, epoch + 1, history, improved)
                last_save = time.monotonic()
                self._draw_curves(history)
        host_state = to_host(state)
        if self.writes:
            _write_json(self.run_dir / "metrics.json", history)
            self._draw_curves(history)      # a resumed run that had nothing left to do too
        return TrainResult(self.run_dir, history, self.variables_of(host_state), self.classes,
                           step_losses)

    # ---- features ----
    def extract_features(self, node: str | None = None, out_dir: str | None = None) -> dict:
        """Pooled features of ``node`` (default: the classifier's input) for the training and
        validation images, without augmentation: ``{split: (features (N, D), labels (N,))}``;
        also written as ``{split}_features.npy``/``{split}_labels.npy`` under ``out_dir``."""
        import jax
        import jax.numpy as jnp
        if self.task.name != "classification":      # features with one label an image
            raise TrainError(f"--extract-features reads class folders; {self.model.name} is a "
                             f"{self.task.name} network")
        g = self.model.graph
        node = node or feature_node(self.model)
        if node not in g.nodes:
            try:
                self.model.program.check_outputs([node])
            except ValueError as e:
                raise TrainError(str(e)) from None
        variables = {"params": {**self.frozen, **self.trainable}}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        model = self.model

        @jax.jit
        def feats(variables, x):
            f = model.apply_fn(variables, x, train=False, outputs=(node,))[node]
            return jnp.mean(f, axis=(1, 2)) if f.ndim == 4 else f.reshape(f.shape[0], -1)

        result = {}
        splits = [("train", self.train_data), ("val", self.val_data)]
        for name, data in splits:
            if data is None or len(data) == 0:
                continue
            loader = Loader(data, self.pre_eval, self.cfg.batch, train=False,
                            workers=self.cfg.workers, prefetch=self.cfg.prefetch)
            chunks = []
            for batch in loader.epoch(0):
                chunks.append(np.asarray(feats(variables, batch["image"]))[batch["weight"] > 0])
            result[name] = (np.concatenate(chunks), np.asarray(data.labels))
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            for name, (f, y) in result.items():
                np.save(out / f"{name}_features.npy", f)
                np.save(out / f"{name}_labels.npy", y)
            _write_json(out / "features.json", {"node": node, "classes": self.classes,
                                                 "dim": int(next(iter(result.values()))[0].shape[1])})
        return result


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def _config_for_resume(run_dir: str, overrides: dict) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainError(f"{run_dir} is not a training run directory (no config.json)")
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainError(f"cannot read {path}: {e}") from None
    cfg = TrainConfig.from_json(d)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    cfg.out = str(run_dir)
    return cfg


def train(spec: str | None = None, data: str | None = None, out: str | None = None, *,
          resume: str | None = None, train_data=None, val_data=None, log=_log,
          **options) -> TrainResult:
    """Train ``spec`` (a built-in name or .arch path) on the image folder ``data``, writing the
    run to ``out``; ``options`` are ``TrainConfig`` fields (epochs, batch, lr, optimizer,
    weights, classes, freeze, ...). ``resume=RUN_DIR`` continues a run (``epochs`` and
    ``progress`` may be overridden)."""
    if resume is not None:
        allowed = {"epochs", "progress", "workers", "prefetch"}
        bad = set(options) - allowed
        if bad or spec or data:
            raise TrainError(f"--resume reads the run's options from its config.json; only "
                             f"{', '.join(sorted(allowed))} may be changed")
        cfg = _config_for_resume(resume, options)
        return Trainer(cfg, train_data=train_data, val_data=val_data, resume=True, log=log).fit()
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"train() got unknown options: {', '.join(unknown)}")
    cfg = TrainConfig(spec=spec, data=None if data is None else str(data),
                      out=None if out is None else str(out), **options)
    if cfg.given is None:
        cfg.given = sorted(k for k in options if k not in ("progress", "params", "input_shape", "lr_mult")
                           or options[k])
    return Trainer(cfg, train_data=train_data, val_data=val_data, log=log).fit()


def extract_features(spec: str, data: str, out: str | None = None, *, node: str | None = None,
                     log=_log, **options) -> dict:
    """Feature-extractor mode: pooled features of ``node`` for every image (no training)."""
    cfg = TrainConfig(spec=spec, data=str(data), out=None, **options)
    trainer = Trainer(cfg, log=log)
    return trainer.extract_features(node, out)
