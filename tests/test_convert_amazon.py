"""scripts/convert_amazon.py: a tiny folder in UniSRec's format round-trips into events.csv and items.csv, the
pipeline's leave-last-out split then holds out exactly the published test and validation items, and damaged files are
named with their row."""

import importlib
import sys

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data import load_data, prepare
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
convert_amazon = importlib.import_module("convert_amazon")

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
SEQUENCES = {"0": [0, 1, 2, 3], "1": [2, 4, 1, 0, 3], "2": [4, 3, 2]}
ASINS = ["B0A", "B0B", "B0C", "B0D", "B0E"]
TEXTS = {
    "B0A": "Porter 80 Grit Roll, 4.5 in. Industrial & Scientific Abrasives Sanding Rolls. PORTER-CABLE. ",
    "B0B": "Vise. Industrial & Scientific Workholding Bench Vises. Shop Fox. ",
    "B0C": "Granite Plate. Industrial & Scientific Test, Measure & Inspect Surface Plates. Grizzly. ",
    "B0D": "Caster. Industrial & Scientific Material Handling Casters. Steelex. ",
    "B0E": "Glue. Industrial & Scientific Adhesives. 3M. ",
}


def write_unisrec(folder, sequences=SEQUENCES, texts=TEXTS, history_cap=50):
    """The format's files for `sequences`; each row's history is cut to its last `history_cap` items (50 published)."""
    folder.mkdir(parents=True, exist_ok=True)

    def row(user, seq, end):
        return f"{user}\t{' '.join(map(str, seq[max(0, end - history_cap):end]))}\t{seq[end]}\n"

    for name, cut in (("test", 0), ("valid", 1)):
        rows = [row(user, seq, len(seq) - 1 - cut) for user, seq in sequences.items()]
        (folder / f"Tiny.{name}.inter").write_text(HEADER + "".join(rows), encoding="utf-8")
    train = [row(user, seq, end) for user, seq in sequences.items() for end in range(len(seq) - 3, 0, -1)]
    (folder / "Tiny.train.inter").write_text(HEADER + "".join(train), encoding="utf-8")
    (folder / "Tiny.text").write_text("item_id:token\ttext:token_seq\n" + "".join(f"{a}\t{t}\n" for a, t in texts.items()), encoding="utf-8")
    (folder / "Tiny.item2index").write_text("".join(f"{a}\t{i}\n" for i, a in enumerate(ASINS)), encoding="utf-8")
    (folder / "Tiny.user2index").write_text("".join(f"R{u}\t{u}\n" for u in sequences), encoding="utf-8")
    return folder


@pytest.mark.parametrize("history_cap", [50, 2])  # 2: every sequence's start is only in the validation and training rows
def test_a_tiny_folder_round_trips_and_the_split_holds_out_the_published_items(tmp_path, history_cap):
    events_path, items_path = convert_amazon.convert(write_unisrec(tmp_path / "src", history_cap=history_cap), tmp_path / "out")
    events = pd.read_csv(events_path, dtype={"user": str, "item": str})
    for user, sequence in SEQUENCES.items():
        rows = events[events["user"] == f"R{user}"].sort_values("position")
        assert rows["item"].tolist() == [ASINS[index] for index in sequence]
        assert rows["position"].tolist() == list(range(len(sequence)))
    items = pd.read_csv(items_path, keep_default_na=False)
    assert items["text"].tolist() == [text.strip() for text in TEXTS.values()]
    first = items.iloc[0]  # a title holding ". " keeps it: the category path and brand are the last two parts
    assert (first["title"], first["category"], first["brand"]) == (
        "Porter 80 Grit Roll, 4.5 in", "Industrial & Scientific Abrasives Sanding Rolls", "PORTER-CABLE")

    config = load_config({
        "data": {
            "interactions": {"path": str(events_path), "columns": {"user": "user", "item": "item", "timestamp": "position"}},
            "items": {"path": str(items_path), "columns": {"id": "item", "category": "category"},
                      "text_fields": ["text"], "text_template": "{text}"},
            "split": {"method": "leave_last_out"},
        },
    })
    data = prepare(load_data(config.data), config.data)
    for split, back in (("test", 1), ("valid", 2)):
        cases = data.eval_cases(split)
        held_out = {str(data.user_ids[user]): str(data.item_ids[targets[0]]) for user, targets in zip(cases.users, cases.targets)}
        assert held_out == {f"R{user}": ASINS[sequence[-back]] for user, sequence in SEQUENCES.items()}


def test_a_validation_row_that_is_not_the_test_sequence_cut_once_is_named(tmp_path):
    folder = write_unisrec(tmp_path / "src")
    lines = (folder / "Tiny.valid.inter").read_text().splitlines()
    lines[2] = "1\t2 4 1\t4"
    (folder / "Tiny.valid.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(convert_amazon.ConversionError, match=r"Tiny.valid.inter: row 3: user 1's items are not a cut of the test row's sequence"):
        convert_amazon.convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_text_and_ragged_rows_are_named(tmp_path):
    folder = write_unisrec(tmp_path / "src", texts={asin: text for asin, text in TEXTS.items() if asin != "B0E"})
    with pytest.raises(convert_amazon.ConversionError, match=r"Tiny.text: no text for 1 items \(first: B0E\)"):
        convert_amazon.convert(folder, tmp_path / "out")
    (folder / "Tiny.test.inter").write_text(HEADER + "0\t0 1 2\n")
    assert convert_amazon.main([str(folder), str(tmp_path / "out")]) == 2
