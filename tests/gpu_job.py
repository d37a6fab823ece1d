"""A stand-in GPU job for tests/test_gpus.py: claims a device slot as `prunebench run` does
before CUDA starts, then holds it at a barrier instead of sleeping: the first job to see
`PB_BARRIER` slots held at once writes `full` (who holds which device then) and every holder is
released; a job started after that, or one of the last few, leaves at once. It prints its device
and the number of jobs holding a slot when it got its own."""
import os
import sys
import time
from pathlib import Path

from prunebench.training.gpus import claim_device

barrier, total = int(os.environ["PB_BARRIER"]), int(os.environ["PB_JOBS"])
holding, done, full = Path("holding"), Path("done"), Path("full")
holding.mkdir(exist_ok=True)
done.mkdir(exist_ok=True)
claim_device()
device = os.environ["CUDA_VISIBLE_DEVICES"]
mine = holding / str(os.getpid())
staged = Path(f"holding.{os.getpid()}")  # written whole, then renamed in: never read half-written
staged.write_text(device)
staged.replace(mine)
held_when_claimed = len(list(holding.iterdir()))
deadline = time.monotonic() + 240  # a barrier that never opens is a failure, not a hang
while not full.exists():
    holders = sorted(holding.iterdir())
    if len(holders) >= barrier:
        tmp = Path(f"full.{os.getpid()}")
        tmp.write_text(" ".join(h.read_text() for h in holders))
        tmp.replace(full)
    elif len(holders) + len(list(done.iterdir())) >= total:
        break
    elif time.monotonic() > deadline:
        sys.exit(f"barrier of {barrier} never reached: {len(holders)} holding")
    time.sleep(0.05)
(done / mine.name).write_text(device)
mine.unlink()
print(device, held_when_claimed)
