"""A stand-in GPU job for tests/test_gpus.py: claims a device slot as `prunebench run` does
before CUDA starts, holds it for a while, and prints its device and start/end times."""
import os
import time

from prunebench.training.gpus import claim_device

claim_device()
start = time.time()
time.sleep(3.0)
print(os.environ["CUDA_VISIBLE_DEVICES"], start, time.time())
