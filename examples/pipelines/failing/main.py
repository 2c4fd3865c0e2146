"""A pipeline that fails: writes to stderr and exits with status 2."""

import sys

print("loading input...")
print("error: input file 'orders.csv' not found", file=sys.stderr)
sys.exit(2)
