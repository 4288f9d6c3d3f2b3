"""archc.testing.strategies draw what they promise (the shapes from the derived size sets)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from archc.compiler import sizes
from archc.compiler.build import build_graph
from archc.spec.source import ArchError
from archc.testing import strategies as S

FAMILY = """param width = 1.0 in [0.25, 2.0]
param layers = [2, 3] in [1, 3]
input 160x160x3
conv3(int(16 * width), p="valid") (conv3(8, s=2) bn relu) * layers[0] maxpool2 * layers[1] gap fc(4)
"""


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    path = tmp_path_factory.mktemp("family") / "fam.arch"
    path.write_text(FAMILY, encoding="utf-8")
    return str(path)


def test_input_shapes_are_valid_or_exact(family):
    @settings(max_examples=25, deadline=None)
    @given(shape=S.input_shapes("unet", exact=True, max_size=700))
    def exact_unet(shape):
        assert shape[0] == shape[1] and (shape[0] - 188) % 16 == 0 and shape[2] == 1
        assert sizes.follow(sizes.plan(build_graph("unet"), 0), shape[0]).exact
    exact_unet()

    @settings(max_examples=10, deadline=None)
    @given(shape=S.input_shapes(family, params={"layers": [1, 1]}))
    def valid(shape):
        build_graph(family, {"layers": [1, 1]}, shape)
    valid()


def test_invalid_input_shapes_are_rejected_near_valid_ones(family):
    @settings(max_examples=10, deadline=None)
    @given(shape=S.invalid_input_shapes("unet"))
    def rejected(shape):
        assert 184 <= min(shape[:2]) < 188
        with pytest.raises(ArchError):
            build_graph("unet", input_shape=shape)
    rejected()
    with pytest.raises(ValueError, match="every size"):
        S.invalid_input_shapes("resnet18")


def test_family_params_stay_in_their_ranges(family):
    @settings(max_examples=20, deadline=None)
    @given(params=S.family_params(family))
    def inside(params):
        assert set(params) == {"width", "layers"}
        assert 0.25 <= params["width"] <= 2.0
        assert len(params["layers"]) == 2 and all(isinstance(x, int) and 1 <= x <= 3 for x in params["layers"])
        build_graph(family, params)
    inside()
    with pytest.raises(ValueError, match="declares no parameter range"):
        S.family_params("resnet18")
    with pytest.raises(ArchError, match="outside its declared range"):
        build_graph(family, {"width": 3.0})


@settings(max_examples=40, deadline=None)
@given(prog=S.programs(ops=("conv", "act", "residual"), max_items=3), block=S.blocks("b", max_depth=1))
def test_programs_and_blocks_are_well_formed(prog, block):
    assert {i.kind for i in prog.items} <= {"conv", "act", "residual"}
    text = f"{block.text}\ninput 24x24x3\n{prog.text}"
    try:
        build_graph(text=text, filename="gen.arch")
    except ArchError as e:           # well formed: only a size can be wrong, never the syntax
        assert all("syntax" not in d.message and "unknown" not in d.message for d in e.diagnostics), text
        assert all(d.span is not None and d.span.file == "gen.arch" for d in e.diagnostics), e.render()


def test_errors_of_nested_combinators_and_prelude_blocks_name_the_users_file():
    """Programs whose nested residuals and concats fail, on their own or inside the prelude's
    blocks (sepconv, se, inception): every error is placed in the user's file (issue 27)."""
    seen = {"prelude": 0, "errors": 0}

    @settings(max_examples=60, deadline=None)
    @given(prog=S.programs(max_depth=3, max_items=3), block=S.blocks("b", max_depth=2),
           h=st.integers(2, 12), k=st.sampled_from([3, 5, 7]), s=st.sampled_from([1, 2, 3]))
    def drawn(prog, block, h, k, s):
        text = (f"{block.text}\ninput {h}x{h}x3\n{prog.text} b sepconv(8, k={k}, s={s}, p=0) se(4)\n"
                f"inception(8, 4>8, 4>8, pool>8, k3={k}) b\n")
        try:
            build_graph(text=text, filename="gen.arch")
        except ArchError as e:
            seen["errors"] += 1
            seen["prelude"] += any(sp is not None and sp.file.endswith("prelude.arch")
                                   for d in e.diagnostics for _, sp in d.notes)
            assert all(d.span is not None and d.span.file == "gen.arch" for d in e.diagnostics), e.render()
    drawn()
    assert seen["errors"] and seen["prelude"], seen      # the check met errors raised inside the prelude


def test_program_type_is_registered_with_hypothesis():
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["hypothesis"]["archc"] == "archc.testing.strategies:_hypothesis_setup_hook"
    S._hypothesis_setup_hook()
    assert isinstance(st.from_type(S.Program).example(), S.Program)
    with pytest.raises(ValueError, match="knows the ops"):
        S.programs(ops=("conv", "lstm"))
