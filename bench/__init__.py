"""deepstep's benchmarks: `python -m bench.run [--quick]` (see README)."""
