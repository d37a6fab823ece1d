"""Speed and memory benchmarks of the engine: ratios measured in one run, never timed tests.

`python -m benchmarks.run [--quick]` prints a table and writes benchmarks/results/*.csv; every row
carries the device, torch version, repeat count and machine load it was measured under.
"""
