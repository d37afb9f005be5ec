"""`python -m server` is `rnnserve serve`."""

import sys

from rnnserve.cli import main

main(["serve", *sys.argv[1:]])
