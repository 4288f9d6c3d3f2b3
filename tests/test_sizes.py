"""The input sizes a network accepts (compiler/sizes.py, `archc check --sizes`).

The symbolic derivation is held to brute force (every size 1..1024 on each axis, pushed through
the IR by `follow`) for every built-in, and `follow` is held to the front end itself
(`build_graph` at another input size: every node's extent) on sampled sizes.
"""
from __future__ import annotations

import itertools
import json
import random
import time

import pytest

from archc.cli import main
from archc.compiler import library, sizes
from archc.compiler.build import build_graph
from archc.spec.source import ArchError

BRUTE = range(1, 1025)


@pytest.fixture(scope="module")
def builtins():
    return {name: build_graph(name) for name in library.names()}


def _axes(graph):
    """The axes to analyse: one when both behave alike."""
    return (0,) if sizes._symmetric(graph) else (0, 1)


def test_every_builtin_agrees_with_brute_force_on_valid_and_exact(builtins):
    spent, derived, fallback = 0.0, 0, []
    several_inputs = []
    for name, g in builtins.items():
        if g.size_reads:
            fallback.append(name)
            continue
        if len(g.inputs) > 1:
            several_inputs.append(name)
        for axis in _axes(g):
            p = sizes.plan(g, axis)
            t = time.process_time()
            d = sizes.derive(p)
            spent += time.process_time() - t
            derived += 1
            for n in BRUTE:
                r = sizes.follow(p, n)
                assert r.unknown is None, (name, axis, n, r.unknown)
                assert (d.valid(n), d.exact(n)) == (r.valid, r.exact), (name, sizes.AXES[axis], n, r)
    # the derivation for every built-in: both axes, or one where they are alike
    assert spent < 5.0, f"{derived} derivations took {spent:.2f} s"
    # the specs whose layers read hin/win are the Keras-padding variants and NASNet's adjust
    assert all(n.startswith(("keras/", "nasnet")) for n in fallback), fallback
    assert len(fallback) < len(builtins) // 5
    # two-stage detectors take their proposals as a second input (R x 4, the same at every image
    # size): derived like the rest, the proposals a constant
    assert several_inputs and all(n.startswith("fasterrcnn") for n in several_inputs), several_inputs


def _samples(d: sizes.Derived, declared: int, rng) -> list:
    valid = sizes.progressions(d.valid, d.pieces)
    lo = valid[0]["start"] if valid else 1
    picks = {declared + 1, declared + 7, lo - 1, lo, rng.randrange(1, 700)}
    return sorted(n for n in picks if n >= 1)


def test_follow_matches_the_front_end_at_other_sizes(builtins):
    """Every node's extent from `follow` is what elaborating the spec at that size records, and
    a size `follow` rejects is one the front end rejects."""
    rng = random.Random(0)
    for name, g in builtins.items():
        if g.size_reads:
            continue
        for axis in _axes(g):
            p = sizes.plan(g, axis)
            d = sizes.derive(p)
            for n in _samples(d, g.input_shape[axis], rng):
                shape = list(g.input_shape)
                shape[axis] = n
                r = sizes.follow(p, n, keep=True)
                try:
                    other = build_graph(name, input_shape=tuple(shape))
                except ArchError:
                    assert not r.valid, (name, shape)
                    continue
                assert r.valid, (name, shape, r.failed)
                assert set(other.nodes) == set(g.nodes), (name, shape)
                for step in p.steps:
                    s = other.nodes[step.name].shape
                    want = s[axis] if len(s) == 3 else (sizes.VEC if r.extents[step.name] == sizes.VEC else sizes.vector(s[0]))
                    assert r.extents[step.name] == want, (name, shape, step.name, r.extents[step.name], s)
                assert r.exact == sizes.follow(sizes.plan(other, axis), n).exact


def _rules(builtins):
    seen = set()
    for g in builtins.values():
        for axis in (0, 1):
            for step in sizes.plan(g, axis).steps:
                if isinstance(step.rule, (sizes.Window, sizes.Affine, sizes.Fixed)):
                    seen.add(step.rule)
    grid = [sizes.Window(k, s, (p0, p1), mode, pool)
            for k, s, p0, p1, mode, pool in itertools.product(range(1, 8), range(1, 5), range(3), range(3),
                                                             (None, "same", "ceil"), (False, True))
            if not (pool and max(p0, p1) * 2 > k)]     # a pool PyTorch rejects at every size
    return sorted(seen, key=repr) + grid


def test_every_size_rule_keeps_its_period_claim(builtins):
    """period() -> (m, q, lo): invalid below lo; from lo on valid, out(e + m) = out(e) + q and
    exactness repeats: what the derivation builds on."""
    for rule in _rules(builtins):
        m, q, lo = rule.period()
        for e in range(1, lo):
            assert rule.apply(e)[0] is None, (rule, e)
        for e in range(lo, lo + 6 * m + 40):
            out, ex = rule.apply(e)
            nxt, ex2 = rule.apply(e + m)
            assert out is not None and nxt == out + q and ex == ex2, (rule, e, out, nxt)


def test_unet_resnet_googlenet_facts():
    unet = sizes.report(build_graph("unet"))
    assert unet["exact"]["height"] == [{"start": 188, "step": 16, "stop": None}]   # H = 16k + 124, k >= 4
    assert unet["exact"]["width"] == unet["exact"]["height"]
    assert unet["output"]["height"][0]["out"] == "H − 184"
    assert unet["min"]["height"] == 188
    p = sizes.plan(build_graph("unet"), 0)
    assert [sizes.follow(p, n).exact for n in (571, 572, 573)] == [False, True, False]
    assert unet["nearest"]["height"] == {"valid": [572], "exact": [572]}
    assert any(c["kind"] == "exact" and c["node"] == "bottom.maxpool1" and c["at"].endswith("unet.arch:28:9")
               for c in unet["constraints"]["height"])

    resnet = sizes.report(build_graph("resnet50"))
    assert resnet["exact"]["height"] == [{"start": 32, "step": 32, "stop": None}]
    assert resnet["valid"]["height"] == [{"start": 1, "step": 1, "stop": None}]
    assert resnet["output"]["height"][0]["out"] == "1000"

    # GoogLeNet's ceil-mode pools: 4 of stride 2 after the stride-2 stem
    g = build_graph("googlenet")
    assert {n.attrs.ceil for n in g if n.op == "pool" and n.attrs.strides == (2, 2)} == {True}
    google = sizes.report(g)
    assert google["exact"]["height"] == [{"start": 64, "step": 32, "stop": None}]
    assert google["min"]["height"] == 63


def test_a_folded_graph_keeps_its_sizes():
    import numpy as np

    from archc.compiler import ops
    from archc.compiler.fold import fold_batchnorm
    g = build_graph("resnet50")
    variables = ops.variables_tree(ops.variable_specs(g), lambda v: np.ones(v.shape, np.float32))
    folded, _ = fold_batchnorm(g, variables)
    assert len(folded.nodes) < len(g.nodes)
    assert sizes.report(folded)["exact"] == sizes.report(g)["exact"]


def test_other_axis_and_non_square_inputs():
    g = build_graph("resnet50", input_shape=(224, 160, 3))
    rep = sizes.report(g)
    assert rep["exact"]["width"] == rep["exact"]["height"] == [{"start": 32, "step": 32, "stop": None}]
    g = build_graph(text="input 64x48x3\nconv3(8, s=[2, 1]) maxpool(k=[1, 3], s=[1, 3])", filename="t.arch")
    rep = sizes.report(g)
    assert rep["exact"]["height"] == [{"start": 2, "step": 2, "stop": None}]
    assert rep["exact"]["width"] == [{"start": 3, "step": 3, "stop": None}]
    assert rep["output"]["height"][0]["out"] == "H/2" and rep["output"]["width"][0]["out"] == "W/3"


def test_no_closed_form_says_so_and_searches():
    # a reshape of a spatial tensor holds only where the number of values matches
    g = build_graph(text="input 4x4x1\nconv3(8) reshape([128])", filename="r.arch")
    rep = sizes.report(g)
    assert "reshapes" in rep["cannot_derive"]["height"]["reason"]
    assert rep["valid"]["height"] == [{"start": 4, "step": 1, "stop": 4}]
    assert rep["cannot_derive"]["height"]["searched"] == [{"start": 1, "step": 1, "stop": sizes.SEARCH_LIMIT}]
    # layers chosen from hin: the fallback elaborates the spec at each size it reports
    text = "input 8x8x3\nconv3(8, s=2 if hin % 4 == 0 else 3)"
    g = build_graph(text=text, filename="h.arch")
    assert g.size_reads
    with pytest.raises(sizes.CannotDerive, match="hin/win"):
        sizes.analyse(g, 0)

    def at(shape):
        return build_graph(text=text, filename="h.arch", input_shape=shape, advise=False)
    rep = sizes.report(g, at)
    exact = {n for grp in rep["exact"]["height"] for n in range(grp["start"], grp["stop"] + 1, grp["step"])}
    assert exact == {n for n in range(1, 41) if n % 4 == 0 or n % 3 == 0}
    assert sizes.inexact_warnings(g) == []      # the IR cannot say: no warning rather than a wrong one


def test_size_dependent_residual_shortcut_is_not_followed():
    # the identity shortcut exists because the body kept the size; at a size where it does not
    # (a valid conv needs >= 3), the front end would add a projection: follow must not guess
    text = "input 8x8x4\nresidual<pad(1) conv3(4, p=\"valid\", s=2) upsample(2)>"
    g = build_graph(text=text, filename="res.arch")
    p = sizes.plan(g, 0)
    assert sizes.follow(p, 8).valid
    odd = sizes.follow(p, 9)
    assert odd.unknown is not None and not odd.valid
    with pytest.raises(sizes.CannotDerive, match="identity shortcut"):
        sizes.report(g)

    def at(shape):
        try:
            return build_graph(text=text, filename="res.arch", input_shape=shape, advise=False)
        except ArchError:
            return None
    rep = sizes.report(g, at)
    assert "identity shortcut" in rep["cannot_derive"]["height"]["reason"]
    valid = {n for grp in rep["valid"]["height"] for n in range(grp["start"], grp["stop"] + 1, grp["step"])}
    assert 8 in valid and valid == {n for n in range(1, 41) if at((n, 8, 4)) is not None}


def test_cli_sizes_text_json_and_warnings(capsys):
    assert main(["check", "unet", "--sizes"]) == 0
    text = capsys.readouterr().out
    assert "height: exact for H = 16k + 188 (k ≥ 0; 188, 204, 220, …, 572, …), out = H − 184; imposed by bottom.maxpool1 at" in text
    assert main(["check", "unet", "--sizes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"valid", "exact", "min", "constraints", "output", "nearest"}
    assert all(set(v) == {"height", "width"} for v in data.values())
    assert main(["check", "unet", "--input", "500x500x1"]) == 0
    captured = capsys.readouterr()
    assert "ok" in captured.out
    assert "warning: height 500 is not exact: bottom.maxpool1" in captured.err
    assert "nearest exact height: 492, 508" in captured.err
    assert main(["check", "unet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_sizes_falls_back_for_a_spec_that_reads_hin(capsys):
    assert main(["check", "keras/mobilenet_v2", "--sizes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    note = data["cannot_derive"]["height"]
    assert "hin/win" in note["reason"] and "mobilenet_v2.arch:25" in note["reason"]
    assert 224 in [n for g in data["exact"]["height"] for n in range(g["start"], g["stop"] + 1, g["step"])]
    assert all(g["stop"] is not None for g in data["valid"]["height"])   # nothing claimed past the search


def test_symbolic_input_on_the_command_line(capsys):
    assert main(["check", "unet", "--input", "HxWx1"]) == 0
    assert capsys.readouterr().out.startswith(
        "unet: HxWx1 -> (H − 184)x(W − 184)x2 for H = 16k + 188, W = 16k + 188 (k ≥ 0, exact); checks for H ≥ 188")
    assert main(["check", "unet", "--input", "Hx508x1"]) == 0
    assert "-> (H − 184)x324x2" in capsys.readouterr().out


def test_symbolic_shape_exports_once_and_runs_at_several_sizes():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import archc
    model = archc.load("resnet18")
    spec, constraints = model.symbolic_shape()
    assert spec == "b, 32*h, 32*w, 3"
    variables = model.init(seed=0)
    x = jax.ShapeDtypeStruct(jax.export.symbolic_shape(spec, constraints=constraints), jnp.float32)
    exported = jax.export.export(jax.jit(model.apply_fn))(variables, x)
    for batch, hw in ((1, (64, 64)), (2, (96, 128))):
        xs = jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + hw + (3,)), jnp.float32)
        want = archc.load("resnet18", input_shape=hw + (3,)).apply(variables, xs)
        np.testing.assert_allclose(exported.call(variables, xs), want, rtol=1e-5, atol=1e-5)


# --- size errors say which sizes work (issue 27) ---------------------------------------------------
MYUNET = """input 96x96x3
enc1: conv3(16) relu
enc2: maxpool(2) conv3(32) relu
enc3: maxpool(2) conv3(64) relu
mid: maxpool(2) conv3(128) relu
up3: upsample(2) concat(@enc3, identity) conv3(64) relu
up2: upsample(2) concat(@enc2, identity) conv3(32) relu
up1: upsample(2) concat(@enc1, identity) conv3(16) relu
out: conv1(2)
"""


def _archc(*args, cwd=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "archc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _builds(spec, shape):
    try:
        build_graph(spec, input_shape=shape, advise=False)
        return True
    except ArchError:
        return False


def test_a_size_error_names_the_nearest_sizes_that_work(tmp_path):
    path = tmp_path / "myunet.arch"
    path.write_text(MYUNET)
    r = _archc("check", "myunet.arch", "--input", "100x100x3", cwd=tmp_path)
    assert r.returncode == 2 and "cannot concatenate 25x25x64 and 24x24x128" in r.stderr
    assert ("note: myunet does not take 100x100x3; the nearest inputs it takes: 96x96x3, 104x104x3 (exact); "
            "the smallest: 8x8x3\n") in r.stderr
    # what the note claims, checked by building the spec at those sizes
    assert not any(_builds(str(path), (n, n, 3)) for n in range(97, 104))
    assert _builds(str(path), (96, 96, 3)) and _builds(str(path), (104, 104, 3))
    assert _builds(str(path), (8, 8, 3)) and not any(_builds(str(path), (n, n, 3)) for n in range(1, 8))


def test_densenet_names_its_smallest_input():
    r = _archc("check", "densenet121", "--input", "16x16x3")
    assert r.returncode == 2
    assert ("note: densenet121 does not take 16x16x3; the nearest inputs it takes: 29x29x3 "
            "(the nearest exact: 32x32x3); the smallest: 29x29x3") in r.stderr
    assert _builds("densenet121", (29, 29, 3)) and not _builds("densenet121", (28, 28, 3))
    with pytest.raises(ArchError, match="the smallest: 29x29x3"):     # the Python API says the same
        import archc
        archc.load("densenet121", input_shape=(16, 16, 3))


def test_sizes_answers_for_an_input_the_spec_rejects(tmp_path):
    (tmp_path / "myunet.arch").write_text(MYUNET)
    r = _archc("check", "myunet.arch", "--input", "100x100x3", "--sizes", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert "height: given 100 is not valid: nearest valid 96, 104, nearest exact 96, 104" in r.stdout
    assert "height: valid for H = 8k + 8 (k ≥ 0; 8, 16, 24, …) (smallest 8" in r.stdout
    r = _archc("check", "myunet.arch", "--input", "100x100x3", "--sizes", "--json", cwd=tmp_path)
    data = json.loads(r.stdout)
    assert data["at"] == [100, 100, 3] and data["nearest"]["width"] == {"valid": [96, 104], "exact": [96, 104]}
