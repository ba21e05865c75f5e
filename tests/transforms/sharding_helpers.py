"""Sharded graphs in one process: each rank's graph built by the real transforms, run by threads that meet at the
graph's collectives (an fx Interpreter per rank does the all-reduce / all-gather between them).

    graphs, ref = rank_graphs(cfg, world_size=2)        # the pipeline up to load_weights, per rank
    outs = run_ranks(graphs, input_ids, position_ids)   # every rank's output (all equal after the gathers)
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any

import torch
from torch import fx

from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.models.weights import assign_weights, source_tensors
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.registry import ordered_entries
from autodeploy_cli.pipeline.runner import PipelineRunner

SHARDING = ("detect_sharding", "sharding_transform_executor")


class _Meeting:
    """The collectives of `world_size` threads: each puts its tensor in, all take the combined result out."""

    def __init__(self, world_size: int):
        self.ws = world_size
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list[Any] = [None] * world_size
        self.counts = {"all_reduce": 0, "all_gather": 0}

    def _exchange(self, rank: int, x: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = x
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got

    def all_reduce(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        self.counts["all_reduce"] += rank == 0
        return torch.stack(self._exchange(rank, x)).sum(0).to(x.dtype)

    def all_gather(self, rank: int, x: torch.Tensor, dim: int) -> torch.Tensor:
        self.counts["all_gather"] += rank == 0
        return torch.cat(self._exchange(rank, x), dim)


class _RankInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, rank: int, meeting: _Meeting):
        super().__init__(gm)
        self.rank, self.meeting = rank, meeting

    def call_function(self, target, args, kwargs):
        ops = torch.ops.auto_deploy
        if target is ops.torch_dist_all_reduce.default:
            return self.meeting.all_reduce(self.rank, args[0])
        if target is ops.torch_dist_all_gather.default:
            return self.meeting.all_gather(self.rank, args[0], args[1])
        return super().call_function(target, args, kwargs)


def run_ranks(graphs: list[fx.GraphModule], *inputs: Any) -> tuple[list[Any], dict]:
    """Run rank r's graph on thread r; returns every rank's output and how many collectives each forward ran."""
    meeting = _Meeting(len(graphs))
    outs: list[Any] = [None] * len(graphs)
    errors: list[BaseException] = []

    def work(r: int) -> None:
        try:
            with torch.no_grad():
                outs[r] = _RankInterpreter(graphs[r], r, meeting).run(*inputs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)
            meeting.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(graphs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return outs, meeting.counts


def _ctx(cfg, factory, rank: int, world_size: int) -> PassContext:
    return PassContext(config=cfg, factory=factory, device=factory.device, rank=rank, world_size=world_size)


def rank_graphs(cfg, world_size: int, through: str = "load_weights") -> tuple[list[fx.GraphModule], list]:
    """Each rank's graph after `through` (export and matchers run once), and each rank's context."""
    entries = ordered_entries(cfg.transforms)
    names = [n for n, _ in entries]
    first = names.index(SHARDING[0])
    factory = ModelFactory(cfg)
    base = _ctx(cfg, factory, 0, 1)
    PipelineRunner(entries[:first]).run(base)
    graphs, ctxs = [], []
    for rank in range(world_size):
        ctx = _ctx(cfg, factory, rank, world_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ctx.model = copy.deepcopy(base.model)
        ctx.weight_hooks = dict(base.weight_hooks)
        ctx.records = PipelineRunner(entries[first: names.index(through) + 1]).run(ctx)
        graphs.append(ctx.model)
        ctxs.append(ctx)
    return graphs, ctxs


def load_reference(graphs: list[fx.GraphModule], ctxs: list, reference: torch.nn.Module) -> None:
    """Give every rank's (meta) graph its slices of `reference`'s weights, as load_weights does."""
    from autodeploy_cli.graph.core import retarget_device_kwargs

    tensors = source_tensors(reference)
    for gm, ctx in zip(graphs, ctxs):
        assign_weights(gm, tensors, ctx.weight_hooks, ctx.weight_slicers, ctx.device)
        retarget_device_kwargs(gm, ctx.device)
