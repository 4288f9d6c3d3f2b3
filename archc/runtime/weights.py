"""Pretrained weights: checkpoint names -> archc variables, layout conversion, strict verification.

    variables, report = archc.import_weights(model, "resnet50.pth", source="torchvision")
    print(report)                 # what went where; on a mismatch WeightsError carries the report

Mapping is by name, through declarative rename rules (TOML, ``archc/architectures/mappings/
FAMILY.SOURCE.toml`` for the built-ins, or the user's own file; see docs/weights.md):

* ``[prefix]``: a rewrite of a module name's leading components, before the steps below
  (``"cell_6" = "cells_2.0"``: blocks numbered across stacks that archc names apart).
* ``[rename]``: checkpoint module -> archc node, exact names or patterns with captured indices,
  ``"layer{a}.{b}.downsample.0" = "layer{a}.{b}.shortcut.conv1"``; ``{b-1}`` shifts a capture.
* a module whose name is an archc node name maps to it unchanged.
* ``[[sequence]]``: explicit order-based pairing where names carry no structure (torch
  ``nn.Sequential`` indices, Keras auto names ``conv2d_17``): the checkpoint modules matching
  ``from`` (in natural order) are paired one by one with the model's nodes matching ``to`` (in
  graph order), verified by kind and shape.
* ``skip = [...]``: checkpoint modules to ignore.

A module is a checkpoint name without its leaf (``layer1.0.conv1`` for ``layer1.0.conv1.weight``;
a Keras layer). Leaves convert by the archc node's op: conv OIHW -> HWIO (grouped and depthwise
included), Linear (out, in) -> (in, out), BatchNorm weight/bias/running stats -> scale/bias and
batch_stats mean/var (``num_batches_tracked`` ignored), ConvTranspose (in, out, kh, kw) ->
(kh, kw, out, in); Keras kernels are already HWIO, depthwise (kh, kw, C, m) -> (kh, kw, 1, C*m),
a SeparableConv2D layer NAME is two modules NAME.depthwise and NAME.pointwise.

Strict: every checkpoint tensor consumed, every model variable filled, every shape equal —
otherwise nothing is returned and :class:`WeightsError` carries a :class:`Report` listing the
missing, unexpected and mismatched entries with both shapes and the nearest names.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..compiler.ops import OPS
from .checkpoint import Checkpoint, CheckpointError, read_checkpoint
from .variables_io import c_contiguous

MAPPINGS = Path(__file__).resolve().parent.parent / "architectures" / "mappings"
SOURCES = ("torchvision", "timm", "keras")


class WeightsError(ValueError):
    """The checkpoint does not fit the model (``.report`` says how), or the rules are invalid."""

    def __init__(self, message: str, report: "Report | None" = None):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\{([A-Za-z_]\w*)(:[wp])?\}|\*\*|\*")
_TEMPLATE = re.compile(r"\{([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\}")


def compile_pattern(pattern: str) -> re.Pattern:
    """``{name}`` captures a run of digits, ``{name:w}`` a word (letters, digits, ``_``),
    ``{name:p}`` a dotted path (words and dots); the same name twice must match the same text.
    ``*`` matches any characters but ``.``, ``**`` any characters; everything else is literal."""
    out, pos, seen = [], 0, set()
    for m in _TOKEN.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        if m.group(1):
            name = m.group(1)
            kind = {":w": r"\w+?", ":p": r"[\w.]+?", None: r"\d+"}[m.group(2)]
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{kind})")
            seen.add(name)
        elif m.group(0) == "**":
            out.append(".*")
        else:
            out.append(r"[^.]*")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


def fill_template(template: str, captures: Mapping, where: str = "") -> str:
    def sub(m):
        name, sign, k = m.groups()
        if name not in captures:
            raise WeightsError(f"rule {where}: the target uses {{{name}}}, which the pattern does not capture")
        if not sign:
            return str(captures[name])
        v = int(captures[name])
        if sign:
            v = v + int(k) if sign == "+" else v - int(k)
        return str(v)
    return _TEMPLATE.sub(sub, template)


@dataclass
class SequenceRule:
    """A rules file's [[sequence]]: the checkpoint's modules matching `src`, sorted by `order`,
    pair one for one with the graph's nodes matching `dst` (of op `op`, when given), in graph order."""
    src: str
    dst: str
    op: str | None = None
    order: str = "natural"          # 'natural' (numeric-aware name order) or 'checkpoint'


@dataclass
class Rules:
    """A parsed rules file (see docs/weights.md)."""
    source: str | None = None
    models: list = field(default_factory=list)
    layout: str | None = None                       # 'torch' | 'keras' (default: from the source)
    prefixes: list = field(default_factory=list)     # (pattern text, compiled, target template)
    renames: list = field(default_factory=list)      # (pattern text, compiled, target template)
    sequences: list = field(default_factory=list)
    skip: list = field(default_factory=list)
    allow_missing: list = field(default_factory=list)
    path: str | None = None


def parse_rules(data: Mapping, path: str | None = None) -> Rules:
    where = path or "rules"
    known = {"source", "models", "layout", "prefix", "rename", "sequence", "skip", "allow_missing", "description"}
    if "preprocess" in data:        # one place for it: the network's .arch file
        raise WeightsError(f"{where}: a rules file has no [preprocess] table: the network's .arch file "
                           "declares its input pipeline, e.g. preprocess(mode=\"caffe\", resize=\"exact\")")
    unknown = set(data) - known
    if unknown:
        raise WeightsError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    r = Rules(source=data.get("source"), models=list(data.get("models", [])), layout=data.get("layout"),
              skip=list(data.get("skip", [])), allow_missing=list(data.get("allow_missing", [])), path=path)
    if r.layout not in (None, "torch", "keras"):
        raise WeightsError(f"{where}: layout must be 'torch' or 'keras', not {r.layout!r}")
    r.prefixes = _parse_renames(data.get("prefix", {}), "prefix", where, prefix=True)
    r.renames = _parse_renames(data.get("rename", {}), "rename", where)
    for i, s in enumerate(data.get("sequence", [])):
        if not isinstance(s, Mapping) or "from" not in s or "to" not in s:
            raise WeightsError(f"{where}: [[sequence]] #{i + 1} needs 'from' and 'to'")
        if s.get("order", "natural") not in ("natural", "checkpoint"):
            raise WeightsError(f"{where}: [[sequence]] #{i + 1}: order is 'natural' or 'checkpoint'")
        r.sequences.append(SequenceRule(s["from"], s["to"], s.get("op"), s.get("order", "natural")))
    return r


def _parse_renames(table, key: str, where: str, prefix: bool = False) -> list:
    """[(pattern text, compiled, target template)] of a [rename] or [prefix] table. A prefix
    pattern matches leading whole components of a name (``cell_1`` not ``cell_10``)."""
    if not isinstance(table, Mapping):
        raise WeightsError(f"{where}: [{key}] must be a table of \"checkpoint pattern\" = \"archc name\"")
    out = []
    for pat, target in table.items():
        if not isinstance(target, str):
            raise WeightsError(f"{where}: {key} {pat!r} must map to a string, not {target!r}")
        rx = compile_pattern(pat)
        if prefix:
            rx = re.compile(rx.pattern.removesuffix(r"\Z") + r"(?=\.|\Z)")
        missing = set(m.group(1) for m in _TEMPLATE.finditer(target)) - set(rx.groupindex)
        if missing:
            raise WeightsError(f"{where}: {key} {pat!r} = {target!r} uses {sorted(missing)}, not captured by the pattern")
        out.append((pat, rx, target))
    return out


def _with_prefix(rules: "Rules", module: str) -> str:
    """The module name after the first [prefix] rule that matches its leading components."""
    for pat, rx, target in rules.prefixes:
        m = rx.match(module)
        if m:
            return fill_template(target, m.groupdict(), f"{pat!r}") + module[m.end():]
    return module


def load_rules(rules) -> Rules:
    """A :class:`Rules` from a path to a TOML file, a parsed mapping, or a Rules."""
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, Mapping):
        return parse_rules(rules)
    import tomllib
    path = Path(rules)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such rules file") from None
    except tomllib.TOMLDecodeError as e:
        raise WeightsError(f"{path}: invalid TOML: {e}") from None
    return parse_rules(data, str(path))


def builtin_rules(model_name: str, source: str | None = None) -> Rules | None:
    """The rules shipped for a built-in architecture and source, or None."""
    for path in sorted(MAPPINGS.glob("*.toml")):
        parts = path.name.split(".")
        if len(parts) != 3 or (source is not None and parts[1] != source):
            continue
        r = load_rules(path)
        if model_name in r.models:
            return r
    return None


def builtin_sources(model_name: str) -> list:
    """The sources a built-in imports from (in SOURCES order)."""
    return sources_by_model().get(model_name, [])


@functools.lru_cache(maxsize=1)
def sources_by_model() -> dict:
    """{built-in name: [sources it imports from, in SOURCES order]}: the mapping files' `models`
    lists (file NAME.SOURCE.toml), read once."""
    found: dict = {}
    for path in sorted(MAPPINGS.glob("*.toml")):
        parts = path.name.split(".")
        if len(parts) == 3 and parts[1] in SOURCES:
            for name in load_rules(path).models:
                found.setdefault(name, set()).add(parts[1])
    return {name: [s for s in SOURCES if s in have] for name, have in found.items()}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def _fmt(shape) -> str:
    return str(tuple(int(d) for d in shape))


@dataclass
class Report:
    model: str
    checkpoint: str
    source: str | None
    loaded: list = field(default_factory=list)      # (checkpoint key, src shape, var path, shape)
    ignored: list = field(default_factory=list)      # (key, why)
    missing: list = field(default_factory=list)      # (var path, shape, nearest checkpoint names)
    unexpected: list = field(default_factory=list)   # (key, shape, nearest model names)
    mismatched: list = field(default_factory=list)   # (key, src shape, converted shape, var path, var shape)
    allowed_missing: list = field(default_factory=list)   # (var path, shape): kept from init
    new: list = field(default_factory=list)          # (var path, shape): outside the part imported into (init)
    part: str | None = None                          # the prefix imported under, with its network
    adapted: list = field(default_factory=list)      # (key, src shape, var path, shape, how): input channels
    errors: list = field(default_factory=list)       # rule problems
    cast: list = field(default_factory=list)          # (key, dtype) converted to float32

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.errors)

    @property
    def n_values(self) -> int:
        n = 0
        for _, _, _, shape in self.loaded:
            n += int(np.prod(shape)) if shape else 1
        return n

    def source_names(self) -> dict:
        """archc node -> the checkpoint's name for it (a Keras layer, a torch module), for every
        node the import filled: what ``model.summary(names=report)`` shows beside archc's names."""
        out: dict = {}
        for key, _, var_path, _ in self.loaded:
            node = var_path.split("/", 1)[1].rpartition("/")[0]
            out.setdefault(node, key.rpartition(".")[0] or key)
        return out

    def to_json(self) -> dict:
        return {
            "model": self.model, "checkpoint": self.checkpoint, "source": self.source, "ok": self.ok,
            "loaded": len(self.loaded), "values": self.n_values,
            "ignored": [{"key": k, "why": w} for k, w in self.ignored],
            "missing": [{"variable": v, "shape": list(s), "nearest": n} for v, s, n in self.missing],
            "unexpected": [{"key": k, "shape": list(s), "nearest": n} for k, s, n in self.unexpected],
            "mismatched": [{"key": k, "shape": list(s), "converted": list(c), "variable": v, "expected": list(e)}
                           for k, s, c, v, e in self.mismatched],
            "allowed_missing": [{"variable": v, "shape": list(s)} for v, s in self.allowed_missing],
            "new": [{"variable": v, "shape": list(s)} for v, s in self.new],
            "adapted": [{"key": k, "shape": list(s), "variable": v, "expected": list(e), "how": h}
                        for k, s, v, e, h in self.adapted],
            "errors": list(self.errors),
        }

    def render(self, limit: int = 10) -> str:
        head = (f"{self.checkpoint} -> {self.model}" + (f", part {self.part}" if self.part else "")
                + (f" (from {self.source})" if self.source else ""))
        lines = []
        ign = {}
        for _, why in self.ignored:
            ign[why] = ign.get(why, 0) + 1
        ign_txt = "; ".join(f"{n} {w}" for w, n in ign.items())
        if self.ok:
            lines.append(f"ok: {head}")
            lines.append(f"  {len(self.loaded)} tensors -> {len(self.loaded)} variables, {self.n_values:,} values"
                         + (f"; ignored {ign_txt}" if ign_txt else ""))
            if self.allowed_missing:
                lines.append(f"  {len(self.allowed_missing)} variables not in the checkpoint, kept from init (allowed):")
                lines += [f"    {v} {_fmt(s)}" for v, s in self.allowed_missing[:limit]]
                if len(self.allowed_missing) > limit:
                    lines.append(f"    … and {len(self.allowed_missing) - limit} more")
            for key, shape, var, want, how in self.adapted:
                lines.append(f"  {key} {_fmt(shape)} adapted to {var} {_fmt(want)}: {how}")
            if self.new:
                lines.append(f"  {len(self.new)} variables outside the part are new (initialised):")
                lines += [f"    {v} {_fmt(s)}" for v, s in self.new[:limit]]
                if len(self.new) > limit:
                    lines.append(f"    … and {len(self.new) - limit} more")
            if self.cast:
                lines.append(f"  {len(self.cast)} tensors converted to float32 (from {sorted(set(d for _, d in self.cast))})")
            return "\n".join(lines)
        counts = []
        for what, items in (("shape mismatches", self.mismatched), ("missing", self.missing),
                            ("unexpected", self.unexpected), ("rule errors", self.errors)):
            if items:
                counts.append(f"{len(items)} {what}")
        lines.append(f"error: the checkpoint does not fit the model: {', '.join(counts)}; nothing was loaded")
        lines.append(f"  {head}: {len(self.loaded)} tensors fitted")
        for e in self.errors[:limit]:
            lines.append(f"  rule error: {e}")

        def section(title, items, fmt):
            if not items:
                return
            lines.append(f"  {title}:")
            for it in items[:limit]:
                lines.append("    " + fmt(it))
            if len(items) > limit:
                lines.append(f"    … and {len(items) - limit} more")

        section("shape mismatch (checkpoint tensor -> model variable)", self.mismatched,
                lambda t: f"{t[0]} {_fmt(t[1])}" + (f" (as {_fmt(t[2])})" if tuple(t[2]) != tuple(t[1]) else "")
                + f" -> {t[3]} needs {_fmt(t[4])}")
        section("missing (model variables that nothing in the checkpoint fills)", self.missing,
                lambda t: f"{t[0]} {_fmt(t[1])}" + (f"   nearest in checkpoint: {', '.join(t[2])}" if t[2] else ""))
        section("unexpected (checkpoint tensors that fit nothing in the model)", self.unexpected,
                lambda t: f"{t[0]} {_fmt(t[1])}" + (f"   nearest in model: {', '.join(t[2])}" if t[2] else ""))
        if self.missing or self.unexpected:
            lines.append("  help: map names with --map RULES.toml (docs/weights.md); for a new head use "
                         "--skip 'fc.*' --allow-missing 'head.*'")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


# --------------------------------------------------------------------------------------------
# Conversion of one module's leaves to one node's variables
# --------------------------------------------------------------------------------------------
def _module_kind(leaves: Mapping, layout: str) -> str:
    names = set(leaves)
    if names & {"running_mean", "running_var", "moving_mean", "moving_variance"}:
        return "bn"
    w = leaves.get("weight") if layout == "torch" else (leaves.get("kernel") if "kernel" in leaves else leaves.get("depthwise_kernel"))
    if w is not None:
        if w.ndim == 4:
            return "conv"
        if w.ndim == 2:
            return "dense"
    if "pointwise_kernel" in names or "depthwise_kernel" in names:
        return "conv"
    return "other"


def _kinds_fit(kind: str, op: str) -> bool:
    want = OPS[op].checkpoint_kind or "other"
    if kind == want or kind == "other" or want == "other":
        return True
    return {kind, want} == {"conv", "dense"}       # 1x1 convs <-> linear layers; shapes decide


def _convert(layout: str, leaf: str, arr: np.ndarray, node, specs: Mapping):
    """(target leaf, converted array) for one checkpoint leaf, or (None, why). The op's own rule
    (its definition's ``weights`` for this layout) comes first, then the generic ones."""
    rule = OPS[node.op].weights.get(layout)
    if isinstance(rule, Mapping):
        if leaf in rule:
            return rule[leaf], arr
    elif rule is not None:
        got = rule(leaf, arr, node.attrs)
        if got is not None:
            return got
    if layout == "torch" and leaf == "weight" and "weight" not in specs:
        only = [k for k in specs if k != "bias"]
        if len(only) == 1:                                   # l2norm scale and the like
            return only[0], arr
    if leaf in specs:
        return leaf, arr
    return None, f"no variable of a {node.op} node takes {leaf!r}"


def _fit(arr: np.ndarray, shape: tuple):
    if tuple(arr.shape) == tuple(shape):
        return arr
    if tuple(d for d in arr.shape if d != 1) == tuple(d for d in shape if d != 1) and arr.size == int(np.prod(shape)):
        return arr.reshape(shape)           # (1, 1, 1, C) statistics for a (C,) variable and the like
    return None


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------
def _natural_key(name: str):
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def _group_modules(tensors: Mapping, layout: str) -> dict:
    """module -> {leaf: key}, in checkpoint order; Keras SeparableConv2D split in two."""
    modules: dict = {}
    for key, arr in tensors.items():
        mod, dot, leaf = key.rpartition(".")
        if not dot:
            mod, leaf = key, ""
        if layout == "keras" and f"{mod}.depthwise_kernel" in tensors and f"{mod}.pointwise_kernel" in tensors:
            sub = "depthwise" if leaf == "depthwise_kernel" else "pointwise"
            modules.setdefault(f"{mod}.{sub}", {})[leaf] = key
            continue
        modules.setdefault(mod, {})[leaf] = key
    return modules


def _any_match(patterns, *names) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def match_weights(model, checkpoint, *, source: str | None = None, rules=None,
                  skip: Sequence[str] = (), allow_missing: Sequence[str] = (),
                  use_torch: bool | None = None, prefix: str | None = None, cut: Sequence[str] = ()):
    """Plan the import without raising on misfit: ``(report, assignments, rules)`` where
    assignments maps (collection, node, leaf) -> float32 array. ``prefix``: import into the part
    of that label (``trunk: resnet18(until=layer4)``) with its network's mapping, strictly for
    the part; the model's other variables are reported as new. ``cut``: stages of the network
    cut off by ``until=``, whose checkpoint tensors are ignored."""
    if prefix is not None:
        return _match_part(model, checkpoint, prefix, source=source, rules=rules, skip=skip,
                           allow_missing=allow_missing, use_torch=use_torch)
    ckpt = read_checkpoint(checkpoint, use_torch=use_torch)
    graph = model.graph
    if rules is None:
        if source is None:
            if ckpt.format.startswith("keras"):
                source = "keras"
            else:
                found = builtin_sources(model.name)
                found = [s for s in found if s != "keras"]
                if not found:
                    raise WeightsError(f"no built-in weight mapping for {model.name!r}; give --map RULES.toml "
                                       "(see docs/weights.md)")
                source = found[0]
        r = builtin_rules(model.name, source)
        if r is None:
            have = builtin_sources(model.name)
            hint = (f"; built-in mappings for it: {', '.join(have)}" if have else
                    "; give your own rules with --map RULES.toml (see docs/weights.md)")
            raise WeightsError(f"no built-in {source} weight mapping for {model.name!r}{hint}")
        rules = r
    else:
        rules = load_rules(rules)
        source = source or rules.source
    layout = rules.layout or ("keras" if (source == "keras" or ckpt.format.startswith("keras")) else "torch")

    label = ckpt.path or "<mapping>"
    report = Report(model=model.name, checkpoint=label, source=source)

    # the model's variables, by node
    specs: dict = {}
    for v in model.variable_specs:
        specs.setdefault(v.node, {})[v.leaf] = v
    node_order = list(specs)

    # the checkpoint's tensors, minus the ignored ones
    tensors = {}
    skip_all = list(skip) + list(rules.skip)
    for key, arr in ckpt.tensors.items():
        if key.endswith("num_batches_tracked"):
            report.ignored.append((key, "num_batches_tracked"))
        elif _any_match(skip_all, key, key.rpartition(".")[0]):
            report.ignored.append((key, "skipped"))
        else:
            tensors[key] = arr
    modules = _group_modules(tensors, layout)

    # 1. renames, 2. identical names, 3. sequences
    binding: dict = {}           # module -> node
    bound_nodes: set = set()
    pending_targets: dict = {}   # module -> target name that is not a node
    named = {mod: _with_prefix(rules, mod) for mod in modules}
    for mod in modules:
        for pat, rx, target in rules.renames:
            m = rx.match(named[mod])
            if m:
                node = fill_template(target, m.groupdict(), f"{pat!r}")
                if node in specs and node not in bound_nodes:
                    binding[mod] = node
                    bound_nodes.add(node)
                elif node in bound_nodes:
                    report.errors.append(f"{pat!r} maps {mod!r} to {node!r}, which another checkpoint module already fills")
                else:
                    pending_targets[mod] = node
                break
    for mod in modules:
        name = named[mod]
        if mod not in binding and mod not in pending_targets and name in specs and name not in bound_nodes:
            binding[mod] = name
            bound_nodes.add(name)
        elif mod not in binding and name != mod:
            pending_targets.setdefault(mod, name)      # renamed by [prefix], but to no node
    for i, seq in enumerate(rules.sequences, 1):
        rx_src, rx_dst = compile_pattern(seq.src), compile_pattern(seq.dst)
        src = [m for m in modules if m not in binding and m not in pending_targets and rx_src.match(m)]
        if seq.order == "natural":
            src.sort(key=_natural_key)
        dst = [n for n in node_order if n not in bound_nodes and rx_dst.match(n)
               and (seq.op is None or graph.nodes[n].op == seq.op)]
        desc = f"[[sequence]] #{i} (from {seq.src!r} to {seq.dst!r}{', op ' + repr(seq.op) if seq.op else ''})"
        if not dst and seq.dst.split(".")[0] in cut:    # into a stage the part cut off: ignored below
            pending_targets.update((m, seq.dst) for m in src)
            continue
        if len(src) != len(dst):
            report.errors.append(f"{desc}: {len(src)} checkpoint modules but {len(dst)} model nodes; "
                                 f"checkpoint {src[:3]}…, model {dst[:3]}…")
            continue
        for k, (s, d) in enumerate(zip(src, dst)):
            kind = _module_kind({l: tensors[key] for l, key in modules[s].items()}, layout)
            if not _kinds_fit(kind, graph.nodes[d].op):
                report.errors.append(f"{desc}: position {k} pairs {s!r} ({kind}) with {d!r} "
                                     f"({graph.nodes[d].op}): the two orders differ there")
                break
            binding[s] = d
            bound_nodes.add(d)

    # convert and check
    first_conv = next((n for n in node_order if graph.nodes[n].op == "conv"), None)  # takes the image
    assignments: dict = {}
    filled: set = set()
    unconsumed: list = []
    for mod, leaves in modules.items():
        node_name = binding.get(mod)
        if node_name is None:
            unconsumed.extend(leaves.values())
            continue
        node = graph.nodes[node_name]
        nspecs = specs[node_name]
        for leaf, key in leaves.items():
            arr = tensors[key]
            target, value = _convert(layout, leaf, arr, node, nspecs)
            if target is None or target not in nspecs or (node_name, target) in filled:
                unconsumed.append(key)
                continue
            spec = nspecs[target]
            var_path = f"{spec.collection}/{node_name}/{target}"
            if value.dtype != np.float32:
                report.cast.append((key, str(value.dtype)))
                value = value.astype(np.float32)
            fitted = _fit(value, spec.shape)
            if fitted is None and node_name == first_conv and target == "kernel":
                fitted, how = adapt_input_conv(value, spec.shape)
                if fitted is not None:
                    report.adapted.append((key, tuple(arr.shape), var_path, tuple(spec.shape), how))
            filled.add((node_name, target))
            if fitted is None:
                report.mismatched.append((key, tuple(arr.shape), tuple(value.shape), var_path, tuple(spec.shape)))
                continue
            assignments[(spec.collection, node_name, target)] = c_contiguous(fitted)     # keeps 0-d arrays 0-d
            report.loaded.append((key, tuple(arr.shape), var_path, tuple(spec.shape)))

    # what is left on either side
    allow_all = list(allow_missing) + list(rules.allow_missing)
    unfilled = []
    for node_name, nspecs in specs.items():
        for leaf, spec in nspecs.items():
            if (node_name, leaf) in filled:
                continue
            path = f"{spec.collection}/{node_name}/{leaf}"
            if _any_match(allow_all, node_name, f"{node_name}/{leaf}", path):
                report.allowed_missing.append((path, tuple(spec.shape)))
            else:
                unfilled.append((node_name, leaf, spec))
    free_mods = sorted({k.rpartition(".")[0] or k for k in unconsumed})
    free_nodes = sorted({n for n, _, _ in unfilled})
    for key in list(unconsumed):
        mod = key.rpartition(".")[0] or key
        stage = pending_targets.get(mod, named.get(mod, mod)).split(".")[0]
        if stage in cut:
            unconsumed.remove(key)
            report.ignored.append((key, f"cut off by until= (stage {stage})"))
    for key in unconsumed:
        mod = key.rpartition(".")[0] or key
        near = []
        if mod in pending_targets:
            near.append(f"(a rule maps it to {pending_targets[mod]!r}, which the model does not have)")
            near += difflib.get_close_matches(pending_targets[mod], list(specs), n=2, cutoff=0.6)
        elif mod in binding:
            near.append(f"(mapped to {binding[mod]!r}, which has no variable for it)")
        else:
            near += difflib.get_close_matches(mod, free_nodes, n=3, cutoff=0.5)
        report.unexpected.append((key, tuple(tensors[key].shape), near))
    all_mods = list(modules)
    near_cache: dict = {}
    for node_name, leaf, spec in unfilled:
        if node_name not in near_cache:
            near = difflib.get_close_matches(node_name, free_mods, n=3, cutoff=0.5)
            if not near:        # nothing left over: the closest names the checkpoint has at all
                near = difflib.get_close_matches(node_name, all_mods, n=2, cutoff=0.6)
            near_cache[node_name] = near
        near = near_cache[node_name]
        report.missing.append((f"{spec.collection}/{node_name}/{leaf}", tuple(spec.shape), near))
    return report, assignments, rules


def adapt_input_conv(kernel: np.ndarray, shape: tuple):
    """A first convolution's HWIO kernel made for 3 input channels, adapted to the model's
    (``shape``) as timm's ``adapt_input_conv`` does: summed over the channels for 1; for more,
    repeated and scaled by 3/C, so a grey or 4-channel image of the same content gives the same
    response. Returns (kernel, what was done), or (None, None) when the shapes differ otherwise."""
    have, want = tuple(kernel.shape), tuple(shape)
    if len(have) != 4 or len(want) != 4 or have[2] != 3 or have[:2] + have[3:] != want[:2] + want[3:]:
        return None, None
    cin = want[2]
    if cin == 1:
        return kernel.sum(axis=2, keepdims=True), "summed over its 3 input channels (timm's adapt_input_conv)"
    repeated = np.tile(kernel, (1, 1, -(-cin // 3), 1))[:, :, :cin, :] * np.float32(3 / cin)
    return repeated.astype(kernel.dtype), (f"repeated to {cin} input channels and scaled by 3/{cin} "
                                           "(timm's adapt_input_conv)")


@dataclass(frozen=True)
class _PartView:
    """One part of a model as a model of its own: its nodes and variables named as in its
    network (``trunk.layer1.0.conv1`` is ``layer1.0.conv1``), for that network's mapping."""
    name: str
    graph: object
    variable_specs: tuple


def _part_view(model, prefix: str):
    from types import SimpleNamespace
    parts = model.graph.parts
    if prefix not in parts:
        have = ", ".join(parts) or "none (label a network used like a block, e.g. 'trunk: resnet18(until=layer4)')"
        near = difflib.get_close_matches(prefix, list(parts), n=1)
        raise WeightsError(f"{model.name} has no part {prefix!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                           + f" (its parts: {have})")
    lead = prefix + "."
    nodes = {n[len(lead):]: node for n, node in model.graph.nodes.items() if n.startswith(lead)}
    specs = tuple(v._replace(node=v.node[len(lead):]) for v in model.variable_specs if v.node.startswith(lead))
    return _PartView(parts[prefix].network, SimpleNamespace(nodes=nodes, params={}), specs), parts[prefix]


def _match_part(model, checkpoint, prefix: str, *, allow_missing: Sequence[str] = (), **kw):
    view, info = _part_view(model, prefix)
    lead = prefix + "."
    within = [p[len(lead):] if p.startswith(lead) else p for p in allow_missing]
    report, assignments, rules = match_weights(view, checkpoint, allow_missing=within, cut=info.dropped, **kw)

    def under(path):        # collection/node/leaf of the view -> of the model
        collection, rest = path.split("/", 1)
        return f"{collection}/{lead}{rest}"
    report.model, report.part = model.name, f"{prefix} ({info.network}" + (f" until {info.until})" if info.until else ")")
    report.loaded = [(k, s, under(v), t) for k, s, v, t in report.loaded]
    report.mismatched = [(k, s, c, under(v), t) for k, s, c, v, t in report.mismatched]
    report.missing = [(under(v), s, n) for v, s, n in report.missing]
    report.allowed_missing = [(under(v), s) for v, s in report.allowed_missing]
    report.adapted = [(k, s, under(v), t, h) for k, s, v, t, h in report.adapted]
    report.new = [(f"{v.collection}/{v.node}/{v.leaf}", tuple(v.shape)) for v in model.variable_specs
                  if not v.node.startswith(lead)]
    return report, {(c, lead + n, leaf): a for (c, n, leaf), a in assignments.items()}, rules


def class_count_from_shapes(model, pairs) -> int | None:
    """The ``classes`` value that would make every (have, want) shape pair agree, when the
    model's family has a ``classes`` parameter and each pair differs in one axis whose size is
    proportional to it (a classifier's fc, SSD's A·classes heads, Faster R-CNN's classes and
    4·classes predictors) and they all point at one count; else None. ``have``: the
    checkpoint's (converted) shape, ``want``: the model's."""
    c = model.graph.params.get("classes")
    if isinstance(c, bool) or not isinstance(c, int) or c < 1 or not pairs:
        return None
    found = set()
    for have, want in pairs:
        have, want = tuple(have), tuple(want)
        diff = [i for i, (a, b) in enumerate(zip(have, want)) if a != b]
        if len(have) != len(want) or len(diff) != 1 or want[diff[0]] % c:
            return None
        per_class = want[diff[0]] // c
        if have[diff[0]] % per_class:
            return None
        found.add(have[diff[0]] // per_class)
    return found.pop() if len(found) == 1 and found != {c} and min(found) >= 1 else None


def classes_in_checkpoint(model, report: "Report") -> int | None:
    """The class count a failed import's shape mismatches point at (``class_count_from_shapes``);
    None when anything else is wrong too (missing or unexpected tensors, rule errors)."""
    if report.ok or report.missing or report.unexpected or report.errors or report.part:
        return None     # (a part's count is its network's, not the model's `classes`)
    return class_count_from_shapes(model, [(conv, want) for _, _, conv, _, want in report.mismatched])


def aux_in_checkpoint(model, report: "Report") -> bool:
    """Whether a failed import has checkpoint tensors the model has no place for (and nothing
    missing) while its family's ``aux`` parameter is off: the auxiliary head that torchvision's
    COCO segmenters (and GoogLeNet's, Inception v3's ImageNet) checkpoints carry."""
    return bool(report.unexpected) and not (report.missing or report.errors or report.part) \
        and model.graph.params.get("aux") is False


def import_weights(model, checkpoint, *, source: str | None = None, rules=None,
                   skip: Sequence[str] = (), allow_missing: Sequence[str] = (), seed: int = 0,
                   use_torch: bool | None = None, prefix: str | None = None):
    """Import a pretrained checkpoint into ``model``'s variables.

    ``checkpoint``: a path (PyTorch .pth/.pt/.bin, .safetensors, Keras .weights.h5/.h5, .npz) or a
    mapping of name -> array. ``source``: 'torchvision', 'timm' or 'keras' (the built-in rules for
    the model; inferred for Keras files). ``rules``: your own rules (TOML path or mapping) instead.
    ``skip``: checkpoint names (glob) to ignore; ``allow_missing``: model variables (glob on the
    node name or ``collection/node/leaf``) that may stay at their init (seed ``seed``).
    ``prefix``: the label of a part (``trunk: resnet18(until=layer4)``): the checkpoint is its
    network's, mapped under the prefix and strict for the part; every other variable is new
    (init, seed ``seed``) and listed in the report.

    Returns ``(variables, report)``. Raises :class:`WeightsError` (with ``.report``) if the
    checkpoint does not fit, :class:`CheckpointError` if it cannot be read; nothing is loaded then.
    """
    report, assignments, _ = match_weights(model, checkpoint, source=source, rules=rules, skip=skip,
                                           allow_missing=allow_missing, use_torch=use_torch, prefix=prefix)
    if not report.ok:
        k = classes_in_checkpoint(model, report)
        hint = (f"\nthe checkpoint has {k} classes: load the network with archc.load({model.name!r}, "
                f"classes={k})" if k else "")
        if aux_in_checkpoint(model, report):
            hint += (f"\nif they are the checkpoint's aux head: archc.load({model.name!r}, aux=True), "
                     f"or skip=[...] them")
        raise WeightsError(report.render() + hint, report)
    return _assemble(model, assignments, report, seed), report


def _assemble(model, assignments: Mapping, report: Report, seed: int) -> dict:
    import jax.numpy as jnp
    from ..compiler.lower import variables_tree
    base = model.init(seed=seed) if report.allowed_missing or report.new else None

    def value(v):
        got = assignments.get((v.collection, v.node, v.leaf))
        return jnp.asarray(base[v.collection][v.node][v.leaf] if got is None else got)

    return variables_tree(model.variable_specs, value)


def weights_metadata(model, report: Report, rules: Rules | None = None) -> dict:
    """String metadata saved with imported variables: the model, the source, and the input
    pipeline the network declares (read back where a network without a declaration uses them)."""
    from .predict import declared_preprocess
    meta = {"archc.model": model.name, "archc.source": report.source or "",
            "archc.checkpoint": Path(report.checkpoint).name}
    pre = declared_preprocess(model)
    if pre is not None:
        meta["archc.preprocess"] = json.dumps(pre, sort_keys=True)
    return meta


__all__ = ["import_weights", "match_weights", "class_count_from_shapes", "classes_in_checkpoint", "load_rules", "parse_rules", "builtin_rules", "builtin_sources",
           "sources_by_model",
           "Rules", "Report", "WeightsError", "CheckpointError", "Checkpoint"]
