"""Benchmarks (not collected by pytest): run ``python tests/bench/webhook.py``."""
