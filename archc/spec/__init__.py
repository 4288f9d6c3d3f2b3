"""The .arch language: grammar, parser, AST and source positions."""
