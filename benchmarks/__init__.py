"""Benchmarks and experiments: ``python -m benchmarks.<name>`` from the repository root."""
