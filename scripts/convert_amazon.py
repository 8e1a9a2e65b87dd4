"""Convert an Amazon review dataset in UniSRec's format (e.g. ../shared/datasets/amazon-scientific/) into the
pipeline's input files: `events.csv` (user, item, position) and `items.csv` (item, text, title, category, brand).

    python scripts/convert_amazon.py ../shared/datasets/amazon-scientific data-amazon/scientific

The folder holds `<Name>.test.inter` (one row per user: the history, then the last item), `<Name>.valid.inter`
(each sequence cut one item earlier), `<Name>.text` (item ASIN, text), `<Name>.item2index` and `<Name>.user2index`.
Each user's whole sequence is the test row's history followed by its item (histories are cut to 50 items: a longer
sequence's start comes from the validation and training rows, each checked to be a cut of it); the log has no
timestamps, so the position in that sequence is the event's time, and the pipeline's leave-last-out split then holds
out exactly the published test and validation items. An item's text is
"title. category path. brand." as published, kept whole as `text`; its parts are split off for `category` (the path,
one category) and `brand`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import pandas as pd


class ConversionError(ValueError):
    """A source file that does not hold what the format says, named with its row."""


def _rows(path: Path, columns: int) -> list[list[str]]:
    if not path.is_file():
        raise ConversionError(f"{path}: missing")
    with path.open(encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines()
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != columns:
            raise ConversionError(f"{path}: row {number}: {len(fields)} tab-separated fields, expected {columns}")
        rows.append(fields)
    return rows


def _index(path: Path) -> dict[int, str]:
    """`<Name>.item2index` / `.user2index` (no header): original id, integer index."""
    if not path.is_file():
        raise ConversionError(f"{path}: missing")
    index = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].isdigit():
            raise ConversionError(f"{path}: row {number}: expected '<id>\\t<index>'")
        index[int(fields[1])] = fields[0]
    return index


def split_text(text: str) -> tuple[str, str, str]:
    """"title. category path. brand." -> (title, category path, brand); a title may itself contain ". "."""
    parts = text.strip().removesuffix(".").rsplit(". ", 2)
    if len(parts) < 3:
        return text.strip(), "", ""
    return parts[0], parts[1], parts[2]


def _windows(path: Path) -> list[tuple[str, list[int], int]]:
    """(user, history + item, row number) per row of a `.inter` file."""
    windows = []
    for number, (user, history, item) in enumerate(_rows(path, 3), start=2):
        try:
            windows.append((user, [int(token) for token in history.split()] + [int(item)], number))
        except ValueError:
            raise ConversionError(f"{path}: row {number}: item indices must be integers") from None
    return windows


def _contains(sequence: list[int], window: list[int]) -> bool:
    return any(sequence[start:start + len(window)] == window for start in range(len(sequence) - len(window) + 1))


def sequences(folder: Path, name: str) -> dict[str, list[int]]:
    """Each user's whole sequence of item indices. The test row holds its last 51 items (histories are cut to 50);
    a longer sequence's earlier items come from the validation and training rows, each of which must be a cut of it."""
    whole = {user: window for user, window, _ in _windows(folder / f"{name}.test.inter")}
    pending: dict[str, list[tuple[list[int], Path, int]]] = {}
    for split in ("valid", "train"):
        path = folder / f"{name}.{split}.inter"
        for user, window, number in _windows(path):
            if user not in whole:
                raise ConversionError(f"{path}: row {number}: user {user} has no test row")
            pending.setdefault(user, []).append((window, path, number))
    for user, windows in pending.items():
        sequence = whole[user]
        while windows:
            # A cut inside the known sequence adds nothing; one starting an item earlier adds that item in front.
            left = [(window, path, number) for window, path, number in windows if not _contains(sequence, window)]
            earlier = [window for window, _, _ in left if window[1:] == sequence[:len(window) - 1]]
            if left and not earlier:
                _, path, number = left[0]
                raise ConversionError(f"{path}: row {number}: user {user}'s items are not a cut of the test row's sequence")
            if earlier:
                sequence = [earlier[0][0], *sequence]
            windows = left
        whole[user] = sequence
    return whole


def convert(folder: str | Path, output: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """Write `events.csv` and `items.csv` into `output`; returns their paths."""
    folder, output = Path(folder), Path(output)
    if name is None:
        found = sorted(path.name.removesuffix(".test.inter") for path in folder.glob("*.test.inter"))
        if len(found) != 1:
            raise ConversionError(f"{folder}: expected one <Name>.test.inter, found {found or 'none'}")
        name = found[0]
    items, users = _index(folder / f"{name}.item2index"), _index(folder / f"{name}.user2index")
    texts = {asin: text for asin, text in _rows(folder / f"{name}.text", 2)}
    events = []
    for user, sequence in sequences(folder, name).items():
        if int(user) not in users:
            raise ConversionError(f"{folder / f'{name}.user2index'}: no user with index {user}")
        for position, item in enumerate(sequence):
            if item not in items:
                raise ConversionError(f"{folder / f'{name}.item2index'}: no item with index {item} (user {user})")
            events.append((users[int(user)], items[item], position))
    missing = sorted({asin for _, asin, _ in events} - set(texts))
    if missing:
        raise ConversionError(f"{folder / f'{name}.text'}: no text for {len(missing)} items (first: {missing[0]})")
    output.mkdir(parents=True, exist_ok=True)
    events_path, items_path = output / "events.csv", output / "items.csv"
    pd.DataFrame(events, columns=["user", "item", "position"]).to_csv(events_path, index=False)
    catalog = [(asin, text.strip(), *split_text(text)) for asin, text in texts.items()]
    pd.DataFrame(catalog, columns=["item", "text", "title", "category", "brand"]).to_csv(items_path, index=False, quoting=csv.QUOTE_MINIMAL)
    return events_path, items_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder in UniSRec's format")
    parser.add_argument("output", help="folder for events.csv and items.csv")
    parser.add_argument("--name", help="dataset name prefix (default: the one <Name>.test.inter in the folder)")
    args = parser.parse_args(argv)
    try:
        events, items = convert(args.source, args.output, args.name)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{events}\n{items}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
