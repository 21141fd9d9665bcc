"""Draw docs/img/timeline.png: a workspace that learns, spills once, then leaks.

Run from the repository root: ``python docs/make_timeline.py``.
"""
import os

import numpy as np

import wsmem

HERE = os.path.dirname(os.path.abspath(__file__))


def main(path=os.path.join(HERE, "img", "timeline.png")):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256))
    w = rng.standard_normal((256, 1024))
    ws = wsmem.Workspace("LOOP", track=True)      # track=True: page faults too
    kept = []
    for step in range(60):
        with ws:
            h = np.maximum(x @ w, 0)              # 512 KiB temporaries
            if step == 20:                        # one larger batch: spills once
                h = np.concatenate([h, h, h])
            y = np.exp(-(h * 2 + 1))
            loss = float(y.sum())
            if step >= 40:                        # a bug: a view escapes every cycle
                kept.append(y[:8])
    del h, y, loss
    wsmem.plot_history(ws, path, title="workspace 'LOOP': learns in cycle 1, spills at "
                       "cycle 21, leaks from cycle 41")
    kept.clear()
    ws.destroy()
    return path


if __name__ == "__main__":
    print(main())
