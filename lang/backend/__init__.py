"""Backends a program runs against: the local runtime over ZeroMQ, or a fake for tests."""
