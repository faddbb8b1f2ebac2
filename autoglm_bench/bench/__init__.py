"""Benchmarks: ``python -m autoglm_bench.bench NAME``. Each prints its numbers against a peer measured in
the same run (machines are noisy, so only same-run ratios mean anything)."""
