"""Train, evaluate and register STPA on your own videos, `<data root>/<class>/<video>`: `python workflows/train_folder.py --data-root DIR`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workflows.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("folder"))
