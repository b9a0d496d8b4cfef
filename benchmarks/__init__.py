"""Benchmarks behind `bench.py <command>`: each module times the real code paths (never a re-implementation) and
prints figures side by side in one run; nothing here is asserted in tests."""
