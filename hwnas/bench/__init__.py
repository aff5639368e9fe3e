"""The NAS-Bench-201 / HW-NAS-Bench replay benchmark's plug-in, fenced off from the controller.

cells.py (cell search spaces, e.g. search_spaces/nb201.yaml), nb201.py (the cells as torch
networks, zero-cost proxies) and replay.py (an engine evaluator that looks figures up in the
published tables instead of measuring). Only benchmarks/ and tests use it: no controller
module imports it (tests/test_layout.py checks), so `hwnas search` never depends on it.
"""
