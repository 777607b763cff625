"""Speed, memory and scale benchmarks of trl_sail (see docs/benchmarks.md). Run `python benchmarks/run.py`."""
