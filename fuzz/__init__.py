"""Fuzzing the sidecar parsers: the invariants (`fuzz.invariants`) and the atheris harness (`fuzz_parsers.py`)."""
