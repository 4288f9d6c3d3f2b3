"""The built-in library against its references (archc/architectures/references/*.toml).

Every table names a built-in network and the counts of its reference implementation; each
network is elaborated (no JAX) and its parameter counts must match exactly, its input and output
shapes where given, and its multiply-accumulates within a tolerance of the paper's figure.

Keys of a table (all optional but the counts):
  trainable, non_trainable, total    exact counts of the reference
  missing_trainable, missing_non_trainable, missing
                                     weights of a reference layer the language cannot express;
                                     archc's count plus these must equal the reference's
  input, output                      "224x224x3" / "1000": shapes without the batch axis
  paper_macs, macs_tolerance         MACs stated in the paper; relative tolerance (default 5%)
  reference_macs                     the implementation's own MAC figure (same tolerance)
  stage_macs, stage_macs_tolerance   {stage: MACs}: per-stage figures (default 5%)
  [[name.variant]]                   params = {…} and the counts of that variant
"""
from __future__ import annotations

import functools
import tomllib

import pytest

from archc.compiler import library
from archc.compiler.build import build_graph
from archc.compiler.stats import summarize

REFERENCES = library.LIBRARY / "references"
COUNT_KEYS = ("trainable", "non_trainable", "total")


def _load() -> tuple[dict, list]:
    entries, duplicates = {}, []
    for path in sorted(REFERENCES.glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
        for name, entry in data.items():
            if name in entries:
                duplicates.append(f"{name}: {entries[name][0]} and {path.name}")
            entries[name] = (path.name, entry)
    return entries, duplicates


ENTRIES, DUPLICATES = _load()
NAMES = sorted(ENTRIES)


@functools.lru_cache(maxsize=None)
def _summary(name: str, params: tuple = ()) -> dict:
    graph = build_graph(name, params=dict(params))
    return summarize(graph)


def _shape(text) -> list:
    return [int(d) for d in str(text).split("x")]


def _check_counts(where: str, s: dict, ref: dict) -> None:
    ours = {"trainable": s["trainable_params"], "non_trainable": s["non_trainable_params"],
            "total": s["total_params"]}
    missing_t = ref.get("missing_trainable", 0)
    missing_n = ref.get("missing_non_trainable", 0)
    adjust = {"trainable": missing_t, "non_trainable": missing_n, "total": missing_t + missing_n}
    for key in COUNT_KEYS:
        if key in ref:
            assert ours[key] + adjust[key] == ref[key], (
                f"{where}: {key} {ours[key]:,}" + (f" + {adjust[key]:,} missing" if adjust[key] else "")
                + f" != reference {ref[key]:,}")


def _check_macs(where: str, ours: int, expected: float, tol: float) -> None:
    rel = ours / expected - 1
    assert abs(rel) <= tol, f"{where}: {ours:,} MACs is {rel:+.1%} from {expected:,.0f} (tolerance {tol:.0%})"


def test_reference_files_present():
    assert (REFERENCES / "classic.toml").is_file()
    assert ENTRIES


def test_no_name_in_two_reference_files():
    assert not DUPLICATES, "names with two reference tables: " + "; ".join(DUPLICATES)


def test_every_builtin_has_a_reference():
    missing = sorted(set(library.names()) - set(ENTRIES))
    assert not missing, f"built-in names without a references/*.toml table: {missing}"


def test_every_reference_is_a_builtin():
    stale = sorted(set(ENTRIES) - set(library.names()))
    assert not stale, f"reference tables for names that are not built-ins: {stale}"


def test_reference_tables_are_well_formed():
    for name, (file, ref) in ENTRIES.items():
        for key in ("paper", "year", "reference"):
            assert key in ref, f"{file} [{name}] has no '{key}'"
        assert any(k in ref for k in COUNT_KEYS), f"{file} [{name}] has no counts"
        if "missing_trainable" in ref or "missing_non_trainable" in ref:
            assert "missing" in ref, f"{file} [{name}]: say what is missing ('missing' key)"


@pytest.mark.parametrize("name", NAMES)
def test_builtin_matches_reference(name):
    file, ref = ENTRIES[name]
    if name not in library.names():
        pytest.skip(f"{name} is not a built-in (see test_every_reference_is_a_builtin)")
    s = _summary(name)
    where = f"{name} ({file})"
    _check_counts(where, s, ref)
    if "input" in ref:
        assert s["input_shape"] == _shape(ref["input"]), f"{where}: input {s['input_shape']}"
    if "output" in ref:
        assert s["output_shape"] == _shape(ref["output"]), f"{where}: output {s['output_shape']}"
    tol = ref.get("macs_tolerance", 0.05)
    if "paper_macs" in ref:
        _check_macs(f"{where} vs paper", s["macs"], ref["paper_macs"], tol)
    if "reference_macs" in ref:
        _check_macs(f"{where} vs reference", s["macs"], ref["reference_macs"], tol)
    stages = ref.get("stage_macs", {})
    for stage, expected in stages.items():
        ours = sum(layer["macs"] for layer in s["layers"]
                   if layer["name"] == stage or layer["name"].startswith(stage + "."))
        _check_macs(f"{where} stage {stage}", ours, expected, ref.get("stage_macs_tolerance", 0.05))
    for variant in ref.get("variant", []):
        params = tuple(sorted(variant["params"].items()))
        _check_counts(f"{where} with {variant['params']}", _summary(name, params), variant)
