"""`python -m experiments.summarize DIR [DIR ...]`: the command lives in experiments.report.summarize."""

import sys

from experiments.report.summarize import main

if __name__ == "__main__":
    sys.exit(main())
