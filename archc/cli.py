"""The `archc` command line. User errors print located diagnostics and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
import time

from .spec.source import ArchError

EXIT_USER = 2


def _shape(text: str) -> tuple:
    try:
        dims = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxWxC such as 224x224x3, got {text!r}") from None
    if len(dims) not in (1, 3) or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected HxWxC with positive sizes, got {text!r}")
    return dims


def _param(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    value = value.strip()
    for conv in (int, float):
        try:
            return key.strip(), conv(value)
        except ValueError:
            pass
    if value in ("true", "false"):
        return key.strip(), value == "true"
    return key.strip(), value


def _graph(args):
    from .compiler.build import build_graph
    params = dict(args.param or [])
    if getattr(args, "expr", None) is not None:
        if args.input is None:
            raise ArchError([_diag("--expr needs --input HxWxC")])
        return build_graph(text=args.expr, filename="<expr>", params=params, input_shape=args.input)
    if args.spec is None:
        raise ArchError([_diag("give a spec (a built-in name or an .arch file) or --expr TEXT")])
    return build_graph(args.spec, params=params, input_shape=args.input)


def _diag(msg, hint=None):
    from .spec.source import Diagnostic
    return Diagnostic(msg, None, hint)


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def cmd_check(args) -> int:
    g = _graph(args)
    if args.expr is not None:
        print(fmt_shape(g.output_shape))
        return 0
    from .compiler.stats import summarize
    s = summarize(g)
    print(f"{g.name}: {fmt_shape(g.input_shape)} -> {fmt_shape(g.output_shape)}, "
          f"{len(g.nodes)} nodes, {s['total_params']:,} params, {s['macs']:,} MACs: ok")
    return 0


def render_table(s: dict, graph) -> str:
    rows = [(l["name"], l["op"], fmt_shape(l["output_shape"]), f"{l['params']:,}") for l in s["layers"]]
    heads = ("Layer", "Op", "Output shape", "Param #")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = "  ".join
    out = [f'Model: "{s["name"]}"', "─" * (sum(widths) + 6),
           line(h.ljust(w) for h, w in zip(heads, widths)), "─" * (sum(widths) + 6)]
    for r in rows:
        out.append(line([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3].rjust(widths[3])]))
    out.append("─" * (sum(widths) + 6))
    out += [f"Total params: {s['total_params']:,}", f"Trainable params: {s['trainable_params']:,}",
            f"Non-trainable params: {s['non_trainable_params']:,}",
            f"MACs: {s['macs']:,} ({s['macs'] / 1e9:.3f} G)",
            f"Input: {fmt_shape(s['input_shape'])}   Output: {fmt_shape(s['output_shape'])}"]
    if len(graph.outputs) > 1:
        out.append("Outputs: " + ", ".join(f"{o} ({fmt_shape(graph.nodes[o].shape)})" for o in graph.outputs))
    return "\n".join(out)


def cmd_build(args) -> int:
    g = _graph(args)
    if args.emit == "ir":
        print(g.dumps())
        return 0
    from .compiler.stats import summarize
    s = summarize(g)
    report = {}
    if not args.no_lower:
        report = _validate_lowering(g, args)
    if args.json:
        s.update(report)
        print(json.dumps(s, indent=1))
    else:
        print(render_table(s, g))
        for k, v in report.items():
            print(f"{k.replace('_', ' ').capitalize()}: {v}")
    return 0


def _validate_lowering(g, args) -> dict:
    """Lower to Flax and compare every node's jax.eval_shape shape with the checker's."""
    try:
        from .runtime.model import Model
    except ImportError:  # lowering not installed in this build
        return {}
    t0 = time.perf_counter()
    model = Model(g)
    shapes = model.eval_shapes(batch=1)
    bad = [n for n, shp in shapes.items() if n in g.nodes and tuple(shp[1:]) != tuple(g.nodes[n].shape)]
    if bad:
        raise RuntimeError(f"internal error: lowered shapes differ from the checker's at {bad[:5]}")
    report = {"lowering_check_s": round(time.perf_counter() - t0, 3)}
    if getattr(args, "compile", False):
        import jax.numpy as jnp
        from .runtime.bench import compile_forward
        x = jnp.ones((args.batch,) + tuple(g.input_shape), jnp.float32)
        _, seconds = compile_forward(model.apply_fn, model.init(seed=args.seed), x)
        report["xla_compile_s"] = round(seconds, 3)
    if getattr(args, "out", None):
        from .runtime.variables_io import save_variables
        save_variables(model.init(seed=args.seed), args.out)
        report["written"] = args.out
    return report


def cmd_bench(args) -> int:
    from .runtime.bench import bench_model
    from .runtime.model import Model
    result = bench_model(Model(_graph(args)), batch=args.batch, iters=args.iters, repeats=args.repeats)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['name']}: batch {result['batch']}, {fmt_shape(result['input_shape'])} on {result['device']}")
        print(f"  XLA compile      {result['compile_s']:.2f} s")
        print(f"  throughput       {result['images_per_s']:.1f} images/s (median of {args.repeats} x {args.iters} calls, warm-up excluded)")
        print(f"  peak memory      {result['peak_rss_mib']:.0f} MiB resident")
    return 0


def cmd_list(args) -> int:
    from .compiler import library
    for name in library.names():
        print(name)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="archc", description="Compile .arch network specs to Flax.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, expr=False):
        sp.add_argument("spec", nargs="?", help="a built-in name (densenet121) or a path to an .arch file")
        sp.add_argument("--param", action="append", type=_param, metavar="KEY=VALUE",
                        help="override a family parameter, e.g. classes=10")
        sp.add_argument("--input", type=_shape, metavar="HxWxC", help="input shape, e.g. 224x224x3")
        if expr:
            sp.add_argument("--expr", metavar="TEXT", help="check a one-line network instead of a file")

    sp = sub.add_parser("check", help="parse and shape-check a spec (no JAX)")
    common(sp, expr=True)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("build", help="build a spec: layer table, parameter counts, MACs")
    common(sp)
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.add_argument("--emit", choices=["ir"], help="print the IR as JSON instead")
    sp.add_argument("--compile", action="store_true", help="also jit-compile the forward pass and time XLA")
    sp.add_argument("--batch", type=int, default=1, help="batch size for --compile")
    sp.add_argument("--out", metavar="FILE", help="write initialised variables (.safetensors)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-lower", action="store_true", help="skip the Flax lowering check")
    sp.set_defaults(func=cmd_build, expr=None)

    sp = sub.add_parser("bench", help="inference throughput, XLA compile time and peak memory")
    common(sp)
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--iters", type=int, default=5)
    sp.add_argument("--repeats", type=int, default=5)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_bench, expr=None)

    sp = sub.add_parser("list", help="list the built-in architectures")
    sp.set_defaults(func=cmd_list)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except ArchError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
