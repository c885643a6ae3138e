"""`python -m experiments.summarize DIR [DIR ...]` and `experiments-summarize`: the command
lives in experiments.report.command."""

import sys

from experiments.report.command import main

if __name__ == "__main__":
    sys.exit(main())
