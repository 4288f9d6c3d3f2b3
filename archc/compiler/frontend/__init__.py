"""The front end's elaboration, AST → IR, in the order a spec flows through it:

- values.py       the language's values (layers, functions, environments), the built-in functions,
                  value checks and descriptions, and the located failure every part raises;
- evaluate.py     expressions to values; what each name and spelling means (SPELLINGS, signature);
- combinators.py  residual<…>, dense<…>, like(@stage): registered like ops (@combinator);
- builder.py      the graph under construction: scoped names, nodes shape-checked as added;
- apply.py        layer values applied to tensors: ops through their Surface.bind, merges, blocks;
- parts.py        networks used as parts (resnet18(until=layer4));
- statements.py   let, block, layer sequences and labelled stages, output;
- declare.py      inputs and declarations (preprocess(…), …);
- program.py      the root file and the modules it imports, family parameters.

compiler/elaborate.py assembles the Elaborator from these parts. One walk evaluates, expands and
shape-checks: shape-dependent defaults (`cin`, a projection shortcut's channels, TF-'same'
padding) need the shapes while expanding, which is why expansion and shape inference share the
walk; later passes (stats, folding, lowering) are separate pure functions of the finished Graph.
"""
