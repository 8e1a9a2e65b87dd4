"""Synthetic behavior logs at any scale, shaped like real ones, in the MovieLens layout the configs already read.

- users and items with power-law (Zipf) activity and popularity: a few heavy users and blockbuster items, long tails;
- per user, sessions: events minutes apart inside a session, days apart between sessions, starting anywhere in a
  two-year window;
- ratings 0.5..5 in half stars, skewed high as on MovieLens; items with a title and 1-3 of 20 genres.

    .venv/bin/python scripts/generate_log.py --events 10000000 --out /tmp/log10m [--format csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = [
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir",
    "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "(no genres listed)",
]
START = 1_500_000_000  # 2017-07-14
TWO_YEARS = 2 * 365 * 86_400


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def generate(events: int, users: int, items: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    user = np.sort(rng.choice(users, size=events, p=zipf_weights(users, 0.9)))
    item = rng.choice(items, size=events, p=zipf_weights(items, 1.0))
    # Gaps: 85% within a session (about 3 minutes), 15% between sessions (about 4 days).
    in_session = rng.random(events) < 0.85
    gaps = np.where(in_session, rng.exponential(180, events), rng.exponential(4 * 86_400, events))
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    user_start = START + rng.integers(0, TWO_YEARS, size=users)
    elapsed = np.cumsum(gaps)
    # Restart the running sum at each user's first event: subtract the sum reached before it.
    offset = np.maximum.accumulate(np.where(first_of_user, elapsed - gaps, 0.0))
    since_start = elapsed - offset
    # Heavy users would run for centuries: squeeze each user's timeline into what is left of the two-year window.
    span = np.ones(users)
    np.maximum.at(span, user, since_start)
    squeeze = np.minimum(1.0, (START + TWO_YEARS - user_start) / span)
    timestamp = user_start[user] + (since_start * squeeze[user]).astype(np.int64)
    rating = np.clip(np.round(rng.normal(3.6, 1.0, events) * 2) / 2, 0.5, 5.0)
    log = pd.DataFrame({"userId": user + 1, "movieId": item + 1, "rating": rating, "timestamp": timestamp})

    genre_count = rng.integers(1, 4, size=items)
    genre_sets = ["|".join(rng.choice(GENRES[:-1], size=count, replace=False)) for count in genre_count]
    catalog = pd.DataFrame(
        {"movieId": np.arange(1, items + 1), "title": [f"Item {i} ({2000 + i % 24})" for i in range(1, items + 1)], "genres": genre_sets}
    )
    return log, catalog


def write(log: pd.DataFrame, catalog: pd.DataFrame, folder: Path, file_format: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "parquet" if file_format == "parquet" else "csv"
    paths = folder / f"ratings.{suffix}", folder / f"movies.{suffix}"
    for frame, path in zip((log, catalog), paths):
        if suffix == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--users", type=int, help="default: events / 100")
    parser.add_argument("--items", type=int, help="default: events / 50")
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    log, catalog = generate(args.events, args.users or max(10, args.events // 100), args.items or max(10, args.events // 50), args.seed)
    for path in write(log, catalog, args.out, args.format):
        print(path)


if __name__ == "__main__":
    main()
