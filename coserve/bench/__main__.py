"""`python -m coserve.bench`: the same as `coserve bench`, without the top-level CLI."""

import argparse
import sys

from coserve.bench.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="coserve bench", description=__doc__)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
