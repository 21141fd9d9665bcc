"""Long run of the workspace state machine (tests/test_state_machine.py).

    PYTHONPATH=. python bench/fuzz.py [--steps 100000] [--steps-per-program 50]

Runs the Hypothesis RuleBasedStateMachine for about `--steps` steps (programs
of `--steps-per-program` steps) and prints the figures: steps, programs, bytes
compared against the shadow model, what the programs did, and the wall time.
Every step checks every byte of every live array and export.
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import numpy as np                                                   # noqa: E402
from hypothesis.stateful import run_state_machine_as_test           # noqa: E402

import wsmem                                                          # noqa: E402
import test_state_machine as sm                                       # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--steps-per-program", type=int, default=50)
    args = p.parse_args()
    print("command:", " ".join(["python"] + sys.argv))
    print(f"wsmem {wsmem.__version__} from {os.path.dirname(wsmem.__file__)}, numpy "
          f"{np.__version__}, python {platform.python_version()}")
    sm.Stats.reset()
    sm.load_lazy_modules()
    t0 = time.perf_counter()
    # Hypothesis ends some programs early: run batches until the steps are done.
    while sm.Stats.steps < args.steps:
        run_state_machine_as_test(
            sm.WorkspaceMachine,
            settings=sm.machine_settings(args.steps - sm.Stats.steps, args.steps_per_program))
    dt = time.perf_counter() - t0
    print(f"result: no failure")
    print(f"steps run (checked after each): {sm.Stats.steps}")
    print(f"programs: {sm.Stats.programs}")
    print(f"bytes compared with the shadow model: {sm.Stats.bytes_checked}")
    print(f"wall time: {dt:.1f} s")
    print("events:")
    for k, v in sorted(sm.Stats.events.items()):
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
