"""Sampled softmax: exact when the negatives are the whole catalog, close to the full softmax's gradient in
expectation otherwise, and trainable end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.models.sampled import Candidates, NegativeSampler
from pipeline.windows import training_windows, window_batches
from tests import shop_log
from tests.conftest import REPO


@pytest.fixture(scope="module")
def shop_batch(tmp_path_factory):
    """A small Transformer with event types and side features, its fitted statistics and one training batch."""
    folder = tmp_path_factory.mktemp("shop")
    shop_log.write(folder, users=40, items=600, seed=2, formats=("parquet",))
    config = load_config(REPO / "configs" / "shop_example.yaml", [
        f"data.interactions.path={folder / 'events.parquet'}", f"data.items.path={folder / 'items.csv'}",
        "model.item_representation=id", "model.hidden_size=16", "model.num_layers=1", "model.dropout=0",
    ])
    data = prepare(load_data(config.data), config.data, config.eval.target_event_types)
    torch.manual_seed(0)
    model = pipeline.api.build(config.model, data, None, 0)
    model.fit_statistics(data.train_view())
    windows = training_windows(data.train_view(), model.max_length)
    batch = next(window_batches(windows, 2, np.random.default_rng(0), torch.device("cpu")))
    return model, batch


def item_gradient(model, batch, candidates=None) -> torch.Tensor:
    """Gradient of the next-item and future-item loss parts over every parameter, flattened."""
    model.zero_grad()
    parts = model(*batch) if candidates is None else model(*batch, candidates=candidates)
    (parts["item"] + parts["future"]).backward()
    return torch.cat([(p.grad.to_dense() if p.grad.is_sparse else p.grad).reshape(-1) for p in model.parameters() if p.grad is not None])


def test_negatives_covering_the_catalog_give_exactly_the_full_softmax(shop_batch):
    model, batch = shop_batch
    counts = model.statistics.item_counts
    sampler = NegativeSampler(counts, negatives=int((counts > 0).sum()), distribution="uniform", generator=torch.Generator())
    candidates = sampler.draw(batch[1])
    assert candidates.items.tolist() == torch.nonzero(counts > 0).squeeze(1).tolist()
    model.eval()  # no dropout: both passes see the same network
    full = model(*batch)
    sampled = model(*batch, candidates=candidates)
    for name in ("item", "future", "category"):
        assert sampled[name].item() == pytest.approx(full[name].item(), rel=1e-6)
    assert torch.allclose(item_gradient(model, batch, candidates), item_gradient(model, batch), atol=1e-6)


def test_sparse_item_rows_give_the_same_gradient_and_a_step_moves_only_the_rows_it_read(shop_batch):
    import copy

    from pipeline.config import TrainConfig
    from pipeline.training import RowSparseAdamW, clip_gradients

    model, batch = shop_batch
    model = copy.deepcopy(model)
    model.eval()
    counts = model.statistics.item_counts
    drawn = NegativeSampler(counts, 30, "uniform", torch.Generator().manual_seed(1)).draw(batch[1])
    sparse = Candidates(drawn.items, drawn.log_inclusion, sparse_rows=True)
    dense_gradient = item_gradient(model, batch, drawn)
    assert torch.allclose(item_gradient(model, batch, sparse), dense_gradient, atol=1e-7)
    assert model.items.id_embedding.weight.grad.is_sparse and model.item_bias.grad.is_sparse

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = RowSparseAdamW(model, parameters, TrainConfig(learning_rate=0.01))
    before = model.items.id_embedding.weight.detach().clone()
    clip_gradients(parameters, max_norm=5.0)
    optimizer.step()
    moved = torch.nonzero((model.items.id_embedding.weight.detach() != before).any(dim=1)).squeeze(1)
    read = model.items.id_rows[torch.unique(torch.cat([batch[0].reshape(-1), sparse.items]))]  # table rows
    assert 0 < len(moved) and set(moved.tolist()) <= set(read.tolist())  # no row outside the step's
    assert len(moved) < 0.2 * len(before)


def test_sampled_gradients_approach_the_full_softmax_in_expectation_with_the_logq_correction(shop_batch):
    model, batch = shop_batch
    model.eval()
    full = item_gradient(model, batch)
    counts = model.statistics.item_counts

    def mean_gradients(negatives: int, draws: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean gradient over draws of frequency-sampled candidates, with and without the logQ correction."""
        sampler = NegativeSampler(counts, negatives, "frequency", torch.Generator().manual_seed(negatives))
        corrected, uncorrected = torch.zeros_like(full), torch.zeros_like(full)
        for _ in range(draws):
            candidates = sampler.draw(batch[1])
            assert len(candidates.items) < int((counts > 0).sum())  # a real sample, not the whole catalog
            corrected += item_gradient(model, batch, candidates) / draws
            uncorrected += item_gradient(model, batch, Candidates(candidates.items, torch.zeros_like(candidates.log_inclusion))) / draws
        return corrected, uncorrected

    def error(gradient: torch.Tensor) -> float:
        return float((gradient - full).norm() / full.norm())

    # A sampled softmax is consistent, not unbiased: its mean gradient nears the full one as the negatives grow
    # (on this catalog of 335 trained items, a batch of two windows with 34 distinct targets). Without the
    # correction, popular items are pushed down for being in nearly every draw.
    few, more = mean_gradients(20), mean_gradients(80)
    assert error(more[0]) < 0.6 * error(few[0])
    assert error(few[0]) < 0.95 * error(few[1]) and error(more[0]) < 0.85 * error(more[1])
    assert float(more[0] @ full / (more[0].norm() * full.norm())) > 0.98


def test_inclusion_probabilities_match_the_draw(shop_batch):
    model, batch = shop_batch
    counts = model.statistics.item_counts
    sampler = NegativeSampler(counts, negatives=10, distribution="uniform", generator=torch.Generator().manual_seed(1))
    targets = batch[1]
    seen = torch.zeros(len(counts))
    draws = 2000
    for _ in range(draws):
        seen[sampler.draw(targets).items] += 1
    # The batch's own targets are always candidates; the rest are in the set about as often as the formula says
    # (the targets part of the formula models them as draws from the target distribution, so compare the others).
    positives = torch.unique(targets[targets > 0])
    assert bool((seen[positives] == draws).all())
    others = torch.ones(len(counts), dtype=torch.bool)
    others[positives] = False
    others &= counts > 0
    expected = 1 - (1 - sampler.sample_probability[others]) ** 10
    assert (seen[others] / draws).numpy() == pytest.approx(expected.numpy(), abs=0.04)


@pytest.mark.slow
def test_a_sampled_run_learns_the_planted_signal_about_as_well_as_the_full_softmax(tmp_path):
    shop_log.write(tmp_path, users=200, items=150, seed=4, formats=("parquet",))
    overrides = [
        f"data.interactions.path={tmp_path / 'events.parquet'}", f"data.items.path={tmp_path / 'items.csv'}",
        "model.item_representation=id", "model.hidden_size=16", "model.num_layers=1", "train.epochs=12",
        f"output.root={tmp_path / 'runs'}", "encoder.cache_dir=" + str(tmp_path / "cache"),
    ]
    runs = {
        loss: pipeline.run(load_config(REPO / "configs" / "shop_example.yaml", [*overrides, f"train.loss={loss}", "train.negatives=16"]))
        for loss in ("full", "sampled")
    }
    test = {loss: run.metrics["splits"]["test"] for loss, run in runs.items()}
    model = next(iter(test["full"]))
    full, sampled = test["full"][model]["ndcg@10"], test["sampled"][model]["ndcg@10"]
    assert sampled >= 0.85 * full
    assert sampled > 2 * test["sampled"]["popularity"]["ndcg@10"]
