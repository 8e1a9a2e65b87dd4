"""Data parallelism under torchrun: who this process is, and gathering per-rank results back into one order.

`torchrun --nproc_per_node N -m pipeline run CONFIG` starts N copies of the CLI; `init_from_environment` joins them
(NCCL on GPUs, one device per local rank; gloo on CPU). Every rank loads and prepares the same data; encoding,
training batches and evaluation users are split across ranks and gathered; only rank 0 writes. Outside torchrun
(or with one process) every helper here is a no-op and the code paths are the single-process ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as dist

from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")


def init_from_environment() -> None:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); otherwise do nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    log.info("rank %d of %d (%s)", rank(), world_size(), dist.get_backend())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def run_on_main(work: Callable[[], None]) -> None:
    """`work()` on rank 0 while the other ranks wait; a bad-input error there is raised on every rank, so no rank
    is left waiting for a rank that gave up."""
    if world_size() == 1:
        work()
        return
    outcome: list = [None]  # (bad input?, message) when rank 0 failed
    if is_main():
        try:
            work()
        except Exception as err:
            outcome[0] = (isinstance(err, PipelineInputError), str(err))
            raise
        finally:
            dist.broadcast_object_list(outcome, src=0)
    else:
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None:
            bad_input, message = outcome[0]
            raise (PipelineInputError if bad_input else RuntimeError)(message if bad_input else f"rank 0 failed: {message}")


def sum_across_ranks(value: float) -> float:
    if world_size() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total.item())


def sum_tensor_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (the ranks' own counts of their own shards add up to the log's)."""
    if world_size() > 1:
        summed = tensor.to(_collective_device(), torch.float64)
        dist.all_reduce(summed)
        tensor.copy_(summed.to(tensor.device, tensor.dtype))
    return tensor


def max_across_ranks(value: int) -> int:
    if world_size() == 1:
        return value
    top = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return int(top.item())


def gather_rows(values, rank_local: bool) -> list:
    """Rank-local rows (`rank_local`: every rank holds its own users) of all ranks, concatenated in rank order: the
    order `map_sharded(..., rank_local=True)` returns results in. Otherwise `values` as they are."""
    if not rank_local or world_size() == 1:
        return list(values)
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, list(values))
    return [value for part in gathered for value in part]


def map_sharded(compute: Callable[[list[int]], list], n_rows: int, rank_local: bool = False) -> list:
    """`compute(rows)` for every row index 0..n_rows-1, rows split round-robin across ranks, results in row order.

    `compute` returns one result per row it is given; every rank gets the full list back. With `rank_local` the rows
    are already this rank's own (torchrun on data.engine duckdb's shards): each rank computes all of its rows and
    every rank gets all ranks' results, in rank order (`gather_rows`).
    """
    if rank_local:
        return gather_rows(compute(list(range(n_rows))), rank_local)
    if world_size() == 1:
        return compute(list(range(n_rows)))
    mine = list(range(rank(), n_rows, world_size()))
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, (mine, compute(mine)))
    ordered: list = [None] * n_rows
    for rows, results in gathered:
        for row, result in zip(rows, results):
            ordered[row] = result
    return ordered


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
