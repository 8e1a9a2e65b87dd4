"""Writes a shop log with planted signal (the generator is `tests/shop_log.py`, which the tests train on).

    .venv/bin/python scripts/generate_shop_log.py --out data/shop --format both   # the bundled sample
    .venv/bin/python scripts/generate_shop_log.py --users 300 --items 300 --out /tmp/shop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.shop_log import write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["parquet", "jsonl", "both"], default="parquet")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    formats = ("parquet", "jsonl") if args.format == "both" else (args.format,)
    write(args.out, args.users, args.items, args.seed, formats)
    print(f"wrote {args.out}: {', '.join(sorted(path.name for path in args.out.iterdir()))}")


if __name__ == "__main__":
    main()
