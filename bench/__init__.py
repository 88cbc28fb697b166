"""Benchmarks: each module runs with ``python -m bench.NAME`` and prints a JSON object as its last line.

Figures and the commands that produced them are recorded in ``docs/benchmarks.md``.
"""
