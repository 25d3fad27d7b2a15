"""The ``dynsearch`` command's face in a source checkout: ``python cli.py ARGS`` runs what the
installed ``dynsearch`` command runs (``dynsearch.cli``, which holds the argument handling)."""
import sys

from dynsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
