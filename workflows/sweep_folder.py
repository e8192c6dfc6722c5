"""Sweep STPA settings on your own videos (`<data root>/<class>/<video>`) with Ray Tune, retrain the best, evaluate, register: `python workflows/sweep_folder.py --data-root DIR`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workflows.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("folder", sweep=True))
