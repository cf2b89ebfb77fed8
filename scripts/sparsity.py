#!/usr/bin/env python
"""`hf-adasplash sparsity` as a script (`python scripts/sparsity.py --help`)."""

import sys

from hf_adasplash.cli.main import main

if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a == "--debug"]  # a global flag: it goes before the subcommand
    sys.exit(main([*flags, "sparsity", *(a for a in sys.argv[1:] if a != "--debug")]))
