"""A quick pipeline: prints a few lines and succeeds."""

import os

print(f"hello from run {os.environ['FASTFLOW_RUN_ID']} of {os.environ['FASTFLOW_PIPELINE']}")
for step in ("extract", "transform", "load"):
    print(f"step {step}: ok")
