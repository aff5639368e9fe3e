"""The `hwnas` command (entry point ``hwnas.cli:main``): main.py parses and reports errors;
one module per group of verbs holds their small command classes."""

from hwnas.cli.main import main

__all__ = ["main"]
