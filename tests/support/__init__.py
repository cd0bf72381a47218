"""Helpers shared by the tests: data, models, databases, the stream harness, Prometheus."""
