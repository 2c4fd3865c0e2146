"""A slow pipeline with visible CPU and memory use (about 12 seconds)."""

import time

blocks = []
for i in range(6):
    blocks.append(bytearray(20 * 1024 * 1024))  # grow RAM by 20 MiB per step
    end = time.monotonic() + 1.0
    n = 0
    while time.monotonic() < end:  # burn CPU for a second
        n += 1
    print(f"step {i + 1}/6: {len(blocks) * 20} MiB held, {n} loop iterations", flush=True)
    time.sleep(1.0)
print("done")
