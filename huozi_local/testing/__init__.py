"""Helpers for tests and benchmarks: tiny GGUF models shaped like huozi 3.0.

Shipped in the package (like `numpy.testing`) so the test suite, the benchmarks and a user's bug
report can all build the same models without network access.
"""
