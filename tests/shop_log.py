"""A shop's export with planted signal: the log `configs/shop_example.yaml` reads and the tests train on.

Items: SKUs with a brand, a category path `Top > Middle > Leaf`, a list price (some missing) and a stock flag; a
tenth of the catalogue is never touched. Users keep to two leaf categories and two brands. In each session they view
a few items (mostly from their own leaves and brands) and add some to the cart; at the session's end they check out
most of the cart (what stays may be bought in a later session). Some buy an item of their own leaf and brand
outright (the popular ones more often); some re-buy a staple. A few events are on SKUs missing from the catalogue. So the next purchase is predictable three ways: carted and not yet bought
(the event type says so), a repeat (the user's own items), and taste (category and brand, for items not yet seen).

Events are written as Parquet with timezone-aware timestamps and as JSONL with ISO-8601 strings whose UTC offsets
vary from event to event (sorting them as text gives the wrong order).

The tests generate their own small logs with it; `scripts/generate_shop_log.py` writes the bundled sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.storage import write_atomic, write_table

TOPS = {
    "Electronics": {"Audio": ["Headphones", "Speakers", "Cables"], "Computing": ["Laptops", "Mice", "Keyboards"]},
    "Home": {"Kitchen": ["Knives", "Pans", "Kettles"], "Garden": ["Hoses", "Seeds", "Tools"]},
    "Sports": {"Running": ["Shoes", "Watches", "Bottles"], "Cycling": ["Helmets", "Lights", "Tools"]},
    "Beauty": {"Skin": ["Creams", "Serums", "Masks"], "Hair": ["Shampoos", "Brushes", "Dryers"]},
}
BRANDS_PER_TOP = 5
START = int(pd.Timestamp("2025-01-06", tz="UTC").timestamp())
OFFSETS = ["+00:00", "+01:00", "-05:00", "+05:30", "-08:00", "+09:00"]


def catalogue(items: int, rng: np.random.Generator) -> pd.DataFrame:
    leaves = [(top, middle, leaf) for top, middles in TOPS.items() for middle, names in middles.items() for leaf in names]
    leaf = rng.integers(0, len(leaves), size=items)
    top_of = np.array([list(TOPS).index(leaves[index][0]) for index in leaf])
    brand = top_of * BRANDS_PER_TOP + rng.integers(0, BRANDS_PER_TOP, size=items)
    base_price = np.exp(rng.normal(3.5, 0.8, size=len(leaves)))
    price = np.round(base_price[leaf] * np.exp(rng.normal(0, 0.3, size=items)), 2)
    frame = pd.DataFrame({
        "sku": [f"SKU-{index:05d}" for index in range(items)],
        "title": [f"{leaves[index][2][:-1]} model {rng.integers(100, 999)}" for index in leaf],
        "brand": [f"Brand{code:02d}" for code in brand],
        "category_path": [" > ".join(leaves[index]) for index in leaf],
        "list_price": np.where(rng.random(items) < 0.05, np.nan, price),
        "in_stock": rng.random(items) < 0.92,
    })
    frame["leaf"], frame["brand_code"] = leaf, brand
    return frame


def generate(users: int = 1000, items: int = 800, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items): events with user_id, sku, event_type, ts (tz-aware), price_paid."""
    rng = np.random.default_rng(seed)
    table = catalogue(items, rng)
    touched = np.flatnonzero(rng.random(items) >= 0.1)
    popularity = 1.0 / np.arange(1, len(touched) + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    rows = []
    for user in range(users):
        leaves = rng.choice(table["leaf"].unique(), size=2, replace=False)
        own_leaf = touched[np.isin(table["leaf"].to_numpy()[touched], leaves)]
        brands = rng.choice(table["brand_code"].to_numpy()[own_leaf], size=2) if len(own_leaf) else []
        own_taste = own_leaf[np.isin(table["brand_code"].to_numpy()[own_leaf], brands)]
        own_taste = own_taste if len(own_taste) else own_leaf
        staple = rng.choice(own_leaf) if len(own_leaf) and rng.random() < 0.5 else None
        time = START + int(rng.integers(0, 60 * 86400))
        carted: list[int] = []

        def popular_in(pool: np.ndarray) -> int:
            weights = popularity[np.searchsorted(touched, pool)]
            return int(rng.choice(pool, p=weights / weights.sum()))

        def emit(item: int, kind: str) -> None:
            nonlocal time
            time += int(rng.exponential(120)) + 5
            paid = float(table["list_price"].iloc[item]) if kind == "purchase" else 0.0
            rows.append((user, item, kind, time, 0.0 if np.isnan(paid) else paid))

        for _ in range(3 + rng.poisson(4)):
            time += int(3600 * (rng.exponential(72) + 1))
            if staple is not None and rng.random() < 0.3:
                emit(staple, "view")
                emit(staple, "purchase")
            for _ in range(1 + rng.poisson(2.5)):
                draw = rng.random()
                pool = own_taste if draw < 0.35 and len(own_taste) else own_leaf if draw < 0.7 and len(own_leaf) else touched
                item = popular_in(pool)
                emit(item, "view")
                if item not in carted and rng.random() < 0.3:
                    emit(item, "add_to_cart")
                    carted.append(item)
            if rng.random() < 0.35 and len(own_taste):
                emit(popular_in(own_taste), "purchase")
            # Checkout at the end of the visit: most of the cart, whether carted now or on an earlier visit.
            for item in list(carted):
                if rng.random() < 0.7:
                    emit(item, "purchase")
                    carted.remove(item)
    events = pd.DataFrame(rows, columns=["user", "item", "event_type", "ts", "price_paid"])
    unknown = rng.random(len(events)) < 0.01
    sku = table["sku"].to_numpy()[events["item"].to_numpy()].astype(object)
    sku[unknown] = [f"SKU-X{index:04d}" for index in range(int(unknown.sum()))]
    events = pd.DataFrame({
        "user_id": [f"u{user:05d}" for user in events["user"]],
        "sku": sku,
        "event_type": events["event_type"],
        "ts": pd.to_datetime(events["ts"], unit="s", utc=True),
        "price_paid": events["price_paid"].round(2),
    })
    # An export is not in time order.
    events = events.iloc[rng.permutation(len(events))].reset_index(drop=True)
    return events, table.drop(columns=["leaf", "brand_code"])


def write(out: Path, users: int, items: int, seed: int, formats: tuple[str, ...] = ("parquet", "jsonl")) -> None:
    """items.csv, and events.parquet (timezone-aware times) and/or events.jsonl (ISO strings, mixed offsets)."""
    events, table = generate(users, items, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "items.csv")
    if "parquet" in formats:
        write_table(events, out / "events.parquet")
    if "jsonl" in formats:
        offsets = np.random.default_rng(seed + 1).choice(OFFSETS, size=len(events))
        local = [
            (time + pd.Timedelta(hours=_hours(offset))).strftime("%Y-%m-%dT%H:%M:%S") + offset
            for time, offset in zip(events["ts"], offsets)
        ]
        write_atomic(out / "events.jsonl", events.assign(ts=local).to_json(orient="records", lines=True))


def _hours(offset: str) -> float:
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = offset[1:].split(":")
    return sign * (int(hours) + int(minutes) / 60)
