"""Benchmark: ``python scripts/bench.py --help`` (same as ``hf-adasplash bench``)."""

import sys

from hf_adasplash.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
