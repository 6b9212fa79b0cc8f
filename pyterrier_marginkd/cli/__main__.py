"""``python -m pyterrier_marginkd.cli``: the ``marginkd`` command."""
import sys

from pyterrier_marginkd.cli import main

main(sys.argv[1:])
