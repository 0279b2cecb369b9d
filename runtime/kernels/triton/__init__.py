"""Triton GPU kernels (one module per concept). Layouts follow runtime/kernels/reference.py,
which is also the oracle the tests compare each kernel against."""
