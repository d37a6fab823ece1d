"""`python -m benchmarks.memory_worker --arch A --method M ...`: one method's CPU peak memory,
measured in a fresh process (so the resident set holds nothing of other methods); prints one
JSON line."""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks.methods import measure_memory


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    a = p.parse_args()
    print(json.dumps(measure_memory(a.arch, a.method, torch.device("cpu"), a.size, a.batch,
                                    a.steps)))


if __name__ == "__main__":
    main()
