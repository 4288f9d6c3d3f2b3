"""Property tests: random well-formed programs; every node's predicted shape against an
independent model of the shape rules written here, from the op definitions (not from archc)."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc.compiler.build import build_graph
from archc.testing.strategies import programs


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


# The independent model: a generated Program's shape, item by item, from the op definitions
# (None when an item is invalid for its input). The generator is archc.testing's, which users
# share; only this model of the shape rules lives here.
def item_shape(item, h, w, c):
    a = item.args
    if item.kind == "conv":
        cout, k, s, p = a
        pad = (k - 1) // 2 if p is None else p
        if h + 2 * pad < k or w + 2 * pad < k:
            return None
        return out_size(h, k, s, pad), out_size(w, k, s, pad), cout
    if item.kind == "pool":
        k = a[1]
        return None if h < k or w < k else (out_size(h, k, k, 0), out_size(w, k, k, 0), c)
    if item.kind == "act":
        return h, w, c
    if item.kind == "concat":
        outs = [run(b, (h, w, c)) for b in a[0]]
        if any(o is None for o in outs) or len({o[:2] for o in outs}) != 1:
            return None
        return outs[0][0], outs[0][1], sum(o[2] for o in outs)
    o = run(a[0], (h, w, c))                  # residual
    if o is None:
        return None
    if o[:2] != (h, w) and not any((h - 1) // s + 1 == o[0] and (w - 1) // s + 1 == o[1] for s in range(1, h + 1)):
        return None  # no 1x1 strided projection reaches the body's size
    return o  # identity when equal, else an inferred projection


def run(program, shape):
    for item in program.items:
        shape = item_shape(item, *shape)
        if shape is None:
            return None
    return shape


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(), h=st.integers(8, 40), c=st.integers(1, 16))
def test_predicted_shapes_match_independent_model(prog, h, c):
    expected = run(prog, (h, h, c))
    if expected is None:
        return  # an invalid combination: the fuzz tests cover that errors are clean
    g = build_graph(text=prog.text, input_shape=(h, h, c))
    assert g.output_shape == expected, prog.text


@settings(max_examples=60, deadline=None)
@given(layers=st.lists(st.tuples(st.integers(1, 32), st.sampled_from([1, 2])), min_size=1, max_size=12), res=st.integers(32, 96))
def test_every_node_of_a_stack(layers, res):
    """A plain stack: check every node's shape, not only the output."""
    text = " ".join(f"conv3({c}, s={s}) bn relu" for c, s in layers)
    g = build_graph(text=text, input_shape=(res, res, 3))
    h = res
    convs = [n for n in g if n.op == "conv"]
    for (c, s), node in zip(layers, convs):
        h = out_size(h, 3, s, 1)
        assert node.shape == (h, h, c)
        assert g.nodes[node.name.replace("conv", "bn")].shape == (h, h, c)
