#!/usr/bin/env python
"""`hf-adasplash finetune` as a script; also `accelerate launch scripts/finetune.py ...` (DDP, FSDP, multi-GPU)."""

import sys

from hf_adasplash.cli.main import main

if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a == "--debug"]  # a global flag: it goes before the subcommand
    sys.exit(main([*flags, "finetune", *(a for a in sys.argv[1:] if a != "--debug")]))
