"""The encoder: real default model, agreement with sentence-transformers, and the on-disk cache."""

import re

import numpy as np
import pytest

from pipeline.config import EncoderConfig, load_config
from pipeline.encoding import (
    TextEncoder,
    behavior_texts,
    encode_behavior,
    encode_texts,
    encoder_identity,
)
from pipeline.errors import PipelineInputError

TEXTS = ["Toy Story (1995). Genres: Animation", "Heat (1995). Genres: Action|Crime", "a", "Jumanji (1995)"]


def test_cache_encodes_each_text_once(tmp_path):
    config = EncoderConfig(cache_dir=str(tmp_path))
    first, stats = encode_texts(TEXTS, config)
    assert (stats.encoded, stats.from_cache) == (4, 0)
    second, stats = encode_texts(TEXTS, config)
    assert (stats.encoded, stats.from_cache) == (0, 4)
    np.testing.assert_array_equal(first, second)
    changed = TEXTS[:3] + ["Jumanji (1995). Tags: board game"]
    third, stats = encode_texts(changed, config)
    assert (stats.encoded, stats.from_cache) == (1, 3)
    np.testing.assert_array_equal(third[:3], first[:3])


def test_embeddings_are_normalized_and_match_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from pipeline.encoding import resolve_model_source

    config = EncoderConfig(cache_dir=str(tmp_path), max_length=128)
    ours, _ = encode_texts(TEXTS, config)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    reference = SentenceTransformer(resolve_model_source(config.model), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.min(np.sum(ours * reference, axis=1)) > 0.999


def test_length_sorted_batches_do_not_change_results(tmp_path):
    config = EncoderConfig(cache_dir=str(tmp_path), batch_size=1, precision="fp32")
    single = TextEncoder(config).encode(TEXTS)
    batched = TextEncoder(config.model_copy(update={"batch_size": 3})).encode(TEXTS)
    np.testing.assert_allclose(single, batched, atol=1e-5)


def test_bf16_embeddings_stay_close_to_fp32(tmp_path):
    fp32 = TextEncoder(EncoderConfig(cache_dir=str(tmp_path), precision="fp32", device="cpu")).encode(TEXTS)
    bf16 = TextEncoder(EncoderConfig(cache_dir=str(tmp_path), precision="bf16", device="cpu")).encode(TEXTS)
    assert np.sum(fp32 * bf16, axis=1).min() > 0.999


def test_cache_identity_depends_on_pooling(tmp_path):
    mean = EncoderConfig(cache_dir=str(tmp_path), pooling="mean")
    cls = EncoderConfig(cache_dir=str(tmp_path), pooling="cls")
    assert encoder_identity(mean) != encoder_identity(cls)
    mean_vectors, _ = encode_texts(TEXTS[:2], mean)
    cls_vectors, stats = encode_texts(TEXTS[:2], cls)
    assert stats.encoded == 2
    assert not np.allclose(mean_vectors, cls_vectors)


def test_missing_encoder_folder_is_a_config_error(tiny_config):
    tiny_config["encoder"]["model"] = "./no/such/model"
    with pytest.raises(PipelineInputError, match=r"encoder\.model: model folder not found"):
        load_config(tiny_config)


def test_behavior_text_is_recent_items_newest_first():
    titles = ["", "A", "B", "C", "D"]
    assert behavior_texts([np.array([1, 2, 3, 4])], titles, recent_items=3) == ["D; C; B"]


def test_behavior_embedding_is_closest_to_its_own_items(tmp_path):
    items = ["", "Toy Story, an animated film about toys", "Heat, a crime thriller about a heist", "Finding Nemo, animated fish"]
    config = EncoderConfig(cache_dir=str(tmp_path))
    users, stats = encode_behavior([np.array([1, 3]), np.array([2])], items, config, recent_items=2)
    item_vectors, _ = encode_texts(items[1:], config)
    similarity = users @ item_vectors.T
    assert similarity[0, [0, 2]].min() > similarity[0, 1]
    assert similarity[1].argmax() == 1
    assert stats.encoded == 2


def test_item_table_is_memory_mapped_from_the_cache_in_the_configured_dtype(tmp_path, monkeypatch):
    from pipeline import embedding_cache
    from pipeline.encoding import encode_items

    items = [""] + TEXTS
    full, stats = encode_items(items, EncoderConfig(cache_dir=str(tmp_path), table_dtype="float32"))
    half, again = encode_items(items, EncoderConfig(cache_dir=str(tmp_path), table_dtype="float16"))
    assert isinstance(full, np.memmap) and isinstance(half, np.memmap)
    assert full.dtype == np.float32 and half.dtype == np.float16 and half.shape == full.shape == (5, 384)
    assert (stats.encoded, again.encoded) == (4, 0)  # the second table is built from the cache
    assert not full[0].any() and not half[0].any()  # padding
    vectors, _ = encode_texts(TEXTS, EncoderConfig(cache_dir=str(tmp_path)))
    np.testing.assert_array_equal(full[1:], vectors)
    cosine = (half[1:].astype(np.float32) * vectors).sum(1) / np.linalg.norm(half[1:].astype(np.float32), axis=1)
    assert cosine.min() > 0.9999
    # auto: float16 from FLOAT16_TABLES_FROM items
    monkeypatch.setattr("pipeline.encoding.FLOAT16_TABLES_FROM", 4)
    auto, _ = encode_items(items, EncoderConfig(cache_dir=str(tmp_path)))
    assert auto.dtype == np.float16 and auto.filename == half.filename  # the same table, reused
    # tables of other catalogs: the newest KEPT_TABLES are kept
    monkeypatch.setattr(embedding_cache, "KEPT_TABLES", 2)
    for drop in range(3):
        encode_items(items[: len(items) - drop], EncoderConfig(cache_dir=str(tmp_path), table_dtype="float32"))
    assert len(list(tmp_path.rglob("tables/*.npy"))) == 2


def test_item_table_stays_in_memory_when_the_cache_is_unwritable(tmp_path, monkeypatch, caplog):
    from pipeline.encoding import encode_items

    config = EncoderConfig(cache_dir=str(tmp_path), table_dtype="float16")
    encode_texts(TEXTS, config)
    (tables,) = {path.parent for path in tmp_path.rglob("shard-*")}
    (tables / "tables").write_text("not a folder")
    with caplog.at_level("WARNING", logger="pipeline"):
        table, stats = encode_items([""] + TEXTS, config)
    assert "item table" in caplog.text and "stays in memory" in caplog.text
    assert not isinstance(table, np.memmap) and table.dtype == np.float16 and table.shape == (5, 384)
    assert stats.encoded == 0


def test_the_encoding_bar_counts_batches_out_of_a_total(tmp_path, capsys):
    from pipeline.encoding import TextEncoder

    encoder = TextEncoder(EncoderConfig(cache_dir=str(tmp_path), batch_size=2))
    encoder.encode(TEXTS, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"encode 4 texts: +\d+%\|[^|]*\| \d/2 ", err), err  # 4 texts in batches of 2
    encoder.encode(TEXTS, progress=False)
    assert capsys.readouterr().err == ""


def test_a_killed_writers_half_table_is_removed_and_a_live_writers_kept(tmp_path):
    import os
    import subprocess

    from pipeline.encoding import encode_items, encoder_identity

    config = EncoderConfig(cache_dir=str(tmp_path), table_dtype="float16")
    encode_texts(TEXTS, config)
    tables = tmp_path / encoder_identity(config) / "tables"
    tables.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no process any more
    abandoned = tables / f".0123abcd.npy.{gone.pid}.tmp"
    live = tables / f".4567cdef.npy.{os.getpid()}.tmp"
    abandoned.write_bytes(b"half a table")
    live.write_bytes(b"another process's table, being written")
    table, _ = encode_items([""] + TEXTS, config)
    assert not abandoned.exists() and live.exists()
    assert table.shape == (5, 384)


LENGTHS = ["short", "a longer text about a film " * 3, "x " * 200, "Heat (1995). Genres: Action|Crime|Thriller", "b"]


def test_onnx_runtime_matches_pytorch_at_every_batch_shape(tmp_path):
    torch_fp32 = TextEncoder(EncoderConfig(cache_dir=str(tmp_path), runtime="torch", precision="fp32", device="cpu"))
    onnx_fp32 = TextEncoder(EncoderConfig(cache_dir=str(tmp_path), runtime="onnx", precision="fp32", device="cpu"))
    assert (torch_fp32.runtime, onnx_fp32.runtime) == ("torch", "onnx")
    reference = torch_fp32.encode(LENGTHS)
    for batch_size in (1, 2, 5):  # batch and token counts other than the export's sample
        onnx_fp32.config = onnx_fp32.config.model_copy(update={"batch_size": batch_size})
        assert np.min(np.sum(onnx_fp32.encode(LENGTHS) * reference, axis=1)) > 0.99999
    # fp32 on either runtime is one cache identity; int8 is cached apart
    assert encoder_identity(onnx_fp32.config) == encoder_identity(torch_fp32.config)
    int8_config = EncoderConfig(cache_dir=str(tmp_path), precision="int8", device="cpu")
    assert encoder_identity(int8_config) != encoder_identity(torch_fp32.config)
    int8 = TextEncoder(int8_config).encode(LENGTHS)
    cosines = np.sum(int8 * reference, axis=1)
    assert 0.97 < np.min(cosines) < 0.99999  # close to fp32, and really quantized
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)


def test_damaged_onnx_export_is_exported_again(tmp_path):
    config = EncoderConfig(cache_dir=str(tmp_path), runtime="onnx", precision="fp32", device="cpu")
    first = TextEncoder(config).encode(TEXTS)
    exported = tmp_path / encoder_identity(config) / "encoder.onnx"
    exported.write_bytes(exported.read_bytes()[:1000])
    np.testing.assert_allclose(TextEncoder(config).encode(TEXTS), first, atol=1e-6)
    assert exported.stat().st_size > 1_000_000


def test_impossible_runtime_settings_are_refused(tmp_path, monkeypatch):
    with pytest.raises(PipelineInputError, match="int8 runs under ONNX Runtime on the CPU"):
        encoder_identity(EncoderConfig(cache_dir=str(tmp_path), precision="int8", runtime="torch"))
    with pytest.raises(PipelineInputError, match="runtime: onnx runs fp32 or int8 on the CPU"):
        encoder_identity(EncoderConfig(cache_dir=str(tmp_path), precision="bf16", runtime="onnx", device="cpu"))
    monkeypatch.setattr("pipeline.encoding.onnx_available", lambda: False)
    monkeypatch.setattr("pipeline.encoder_onnx.onnx_available", lambda: False)
    with pytest.raises(PipelineInputError, match=r"interest-pipeline\[onnx\]"):
        encoder_identity(EncoderConfig(cache_dir=str(tmp_path), precision="int8", device="cpu"))
    fallback = EncoderConfig(cache_dir=str(tmp_path), precision="fp32", device="cpu")
    assert TextEncoder(fallback).runtime == "torch"  # auto without ONNX Runtime: PyTorch


def test_the_int8_export_leaves_the_root_logger_alone(tmp_path):
    import logging

    before = list(logging.getLogger().handlers)
    TextEncoder(EncoderConfig(cache_dir=str(tmp_path), precision="int8", device="cpu"))
    assert logging.getLogger().handlers == before  # else every pipeline log line prints twice
