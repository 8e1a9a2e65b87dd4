"""Rewrite a RecBole `.inter` file so RecBole orders each user's events exactly as the pipeline's protocol does.

RecBole stores `timestamp:float` fields as float32, whose spacing near 1.5e9 is 128 s: on MovieLens latest-small
85,043 distinct timestamps collapse to 26,798, 73% of a user's events tie with the previous one instead of 16%, and
its stable sort then orders each 128-second block by file row (ascending movieId). The user's last event, the test
target, differs from the true last event for 36% of users. This script replaces each timestamp by the event's rank in
the stable sort by true timestamp (ties keep file order): integers below 2^24, exact in float32, same order.

usage: recbole_exact_order.py INTER_FILE   (rewritten in place, atomically)
"""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main(path: Path) -> None:
    table = pd.read_csv(path, sep="\t", dtype=str)
    column = next(name for name in table.columns if name.startswith("timestamp:"))
    order = np.argsort(table[column].astype(np.int64).to_numpy(), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    if len(ranks) >= 2**24:
        sys.exit(f"{path}: {len(ranks)} events; ranks past 2^24 are not exact in float32")
    table[column] = ranks.astype(str)
    scratch = path.with_name(path.name + ".tmp")
    table.to_csv(scratch, sep="\t", index=False)
    os.replace(scratch, path)
    print(f"{path}: {len(table)} events, timestamps replaced by their exact order")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
