"""A noisy pipeline: prints 200,000 lines on stdout and stderr."""

import sys

for i in range(200_000):
    stream = sys.stderr if i % 1000 == 999 else sys.stdout
    print(f"record {i}: value={i * 7 % 1013} status=ok", file=stream)
print("finished 200000 records")
