"""Sweep STPA settings on HMDB51 with Ray Tune, retrain the best, evaluate, register: `python workflows/sweep_hmdb51.py --help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workflows.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("hmdb51", sweep=True))
