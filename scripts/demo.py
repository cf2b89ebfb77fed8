#!/usr/bin/env python
"""`hf-adasplash demo` as a script (`python scripts/demo.py --help`)."""

import sys

from hf_adasplash.cli.main import main

if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a == "--debug"]  # a global flag: it goes before the subcommand
    sys.exit(main([*flags, "demo", *(a for a in sys.argv[1:] if a != "--debug")]))
