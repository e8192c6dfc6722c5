"""Sweep STPA settings on CHARADES with Ray Tune, retrain the best, evaluate, register: `python workflows/sweep_charades.py --help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workflows.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("charades", sweep=True))
