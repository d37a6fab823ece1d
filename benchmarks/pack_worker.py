"""`python -m benchmarks.pack_worker ...`: one small dense training job (a packing benchmark
worker); prints one JSON line with its training seconds."""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import PhaseStepper, build, synthetic_prepared


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from prunebench.data.prepared import DeviceData

    device = torch.device(a.device)
    data = DeviceData(synthetic_prepared(a.images, 0, 32, seed=a.seed), device, 0.0,
                      channels_last=device.type == "cuda")
    stepper = PhaseStepper(build(a.arch, "dense", data, device, a.batch, seed=a.seed), 0)
    train_s = sum(stepper.step_seconds() * stepper.steps for _ in range(a.epochs))
    print(json.dumps({"train_s": train_s}))


if __name__ == "__main__":
    main()
