"""Property tests: random well-formed programs; every node's predicted shape against an
independent model of the shape rules written here, from the op definitions (not from archc)."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc.compiler.build import build_graph


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


# A program is a list of items, each a (text, shape_fn) pair; shape_fn maps (h, w, c) -> (h, w, c)
# or None when the item would be invalid for that input (the generator then skips it).
def conv_item(draw):
    c = draw(st.integers(1, 24))
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.sampled_from([1, 2]))
    p = draw(st.sampled_from([None, 0, 1]))
    text = f"conv({c}, {k}, s={s}" + (f", p={p})" if p is not None else ")")
    pad = (k - 1) // 2 if p is None else p

    def f(h, w, cin):
        if h + 2 * pad < k or w + 2 * pad < k:
            return None
        return out_size(h, k, s, pad), out_size(w, k, s, pad), c
    return text, f


def pool_item(draw):
    k = draw(st.sampled_from([2, 3]))
    kind = draw(st.sampled_from(["maxpool", "avgpool"]))
    text = f"{kind}({k})"
    return text, lambda h, w, c: None if h < k or w < k else (out_size(h, k, k, 0), out_size(w, k, k, 0), c)


def act_item(draw):
    name = draw(st.sampled_from(["relu", "bn", "sigmoid", "relu6", "swish", "identity", "dropout(0.1)"]))
    return name, lambda h, w, c: (h, w, c)


def concat_item(draw, depth):
    branches = draw(st.lists(st.builds(lambda: None).flatmap(lambda _: program(depth + 1)), min_size=2, max_size=3))
    text = "concat(" + ", ".join(b[0] for b in branches) + ")"

    def f(h, w, c):
        outs = [run(b[1], (h, w, c)) for b in branches]
        if any(o is None for o in outs) or len({o[:2] for o in outs}) != 1:
            return None
        return outs[0][0], outs[0][1], sum(o[2] for o in outs)
    return text, f


def residual_item(draw, depth):
    body = draw(program(depth + 1))
    text = f"residual<{body[0]}>"

    def f(h, w, c):
        o = run(body[1], (h, w, c))
        if o is None:
            return None
        if o[:2] != (h, w) and not any((h - 1) // s + 1 == o[0] and (w - 1) // s + 1 == o[1] for s in range(1, h + 1)):
            return None  # no 1x1 strided projection reaches the body's size
        return o  # identity when equal, else an inferred projection
    return text, f


def run(fns, shape):
    for f in fns:
        shape = f(*shape)
        if shape is None:
            return None
    return shape


@st.composite
def item(draw, depth):
    choices = ["conv", "pool", "act"] + (["concat", "residual"] if depth < 2 else [])
    kind = draw(st.sampled_from(choices))
    if kind == "conv":
        return conv_item(draw)
    if kind == "pool":
        return pool_item(draw)
    if kind == "act":
        return act_item(draw)
    if kind == "concat":
        return concat_item(draw, depth)
    return residual_item(draw, depth)


@st.composite
def program(draw, depth=0):
    items = draw(st.lists(item(depth), min_size=1, max_size=4))
    return " ".join(t for t, _ in items), [f for _, f in items]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=program(), h=st.integers(8, 40), c=st.integers(1, 16))
def test_predicted_shapes_match_independent_model(prog, h, c):
    text, fns = prog
    expected = run(fns, (h, h, c))
    if expected is None:
        return  # an invalid combination: the fuzz tests cover that errors are clean
    g = build_graph(text=text, input_shape=(h, h, c))
    assert g.output_shape == expected, text


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
