"""How much a little background CPU slows CPU training that uses every core: the plain loop of
``benchmarks/train.py`` alone, then beside a second process that burns a fixed share of one core in short bursts
(as Ray's services and Ray Data's reads do beside a Ray Train worker), alternating, same run.

    python benchmarks/interference.py [--rounds 2] [--steps 30]

torch runs one OpenMP team over all cores; every parallel region ends at a barrier, so a burst that takes one
team thread's core holds up the whole step while the other threads wait idle. The slowdown is therefore a
multiple of the CPU the disturber takes (``amplification``: the fraction of steps/s lost per fraction of the
machine's CPU taken). This is why ``benchmarks/train.py`` finds the Ray Train loop slower than the plain loop on a
machine whose every core trains (see BENCHMARKS.md); with spare cores (or a GPU doing the math) it does not apply.

Prints per-measurement lines and, last:
``RESULT interference ratio_10=<steps/s beside 10% of a core / alone> ratio_20=... amplification_10=...
amplification_20=... quiet_steps_per_s=... cpus=...``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# A share of one core as bursts of ``burn`` seconds every ``burn + sleep`` seconds.
DISTURBER = """
import time
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < {burn}:
        pass
    time.sleep({sleep})
"""
DISTURBERS = {"10": (0.0001, 0.0009), "20": (0.0002, 0.0008)}  # 10% and 20% of a core, in 0.1-0.2 ms bursts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the three settings")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    import train as bench_train

    from pipeline import schema
    from pipeline.clips.cache import clip_shape

    defaults = bench_train.parse_args([])  # the train benchmark's model, input size, K and batch
    exp = bench_train.experiment(defaults, num_classes=5, num_workers=1)
    rng = np.random.default_rng(0)
    shape = (exp.train.batch_size, *clip_shape(exp.train_clips))
    batches = [
        {
            schema.FRAMES: rng.integers(0, 256, size=shape, dtype=np.uint8),
            schema.LABEL: rng.integers(0, 5, size=exp.train.batch_size),
        }
        for _ in range(4)
    ]
    cpus = os.cpu_count() or 1
    print(f"{cpus} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; batch {shape}")
    rates: dict[str, list[float]] = {"quiet": [], **{share: [] for share in DISTURBERS}}
    for _ in range(args.rounds):
        for setting in rates:
            disturber = None
            if setting != "quiet":
                burn, sleep = DISTURBERS[setting]
                code = DISTURBER.format(burn=burn, sleep=sleep)
                disturber = subprocess.Popen([sys.executable, "-c", code])
                time.sleep(0.5)
            try:
                rates[setting].append(bench_train.plain_steps_per_second(exp, batches, args.steps))
            finally:
                if disturber is not None:
                    disturber.kill()
                    disturber.wait()
            label = "alone" if setting == "quiet" else f"beside {setting}% of a core"
            print(f"plain loop {label}: {rates[setting][-1]:.3f} steps/s; load {os.getloadavg()[0]:.2f}")
    quiet = statistics.median(rates["quiet"])
    fields = [f"quiet_steps_per_s={quiet:.3f}"]
    for share in DISTURBERS:
        ratio = statistics.median(rates[share]) / quiet
        machine_share = int(share) / 100 / cpus  # the fraction of the machine's CPU the disturber takes
        fields.insert(0, f"ratio_{share}={ratio:.3f}")
        fields.append(f"amplification_{share}={(1 - ratio) / machine_share:.1f}")
    print(
        "RESULT interference "
        + " ".join(sorted(fields, key=lambda f: not f.startswith("ratio")))
        + f" cpus={cpus}"
    )


if __name__ == "__main__":
    main()
