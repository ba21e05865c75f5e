"""The sharding plan `detect_sharding` records and `sharding_transform_executor` applies (plain data).

Nodes are named by `node.name` (the two transforms run back to back on the same graph); weights by their graph
attribute name. Every decision also becomes a row of the build report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

STYLES = ("colwise", "rowwise", "gather", "replicated")


@dataclass
class WeightSplit:
    """This rank's part of a weight: the blocks [start, stop) along `dim`, concatenated, zero-padded to `pad_to`."""

    name: str
    dim: int
    ranges: list[tuple[int, int]]
    full_shape: tuple[int, ...]
    pad_to: Optional[int] = None

    @property
    def local_len(self) -> int:
        return max(sum(b - a for a, b in self.ranges), self.pad_to or 0)

    @property
    def local_shape(self) -> tuple[int, ...]:
        shape = list(self.full_shape)
        shape[self.dim] = self.local_len
        return tuple(shape)

    def slicer(self) -> Callable[[Any], torch.Tensor]:
        """fn(full tensor, or a lazily read checkpoint tensor) -> this rank's part; a tensor that already has this
        rank's shape (a pre-sharded state dict) passes through."""
        dim, ranges, pad_to = self.dim, list(self.ranges), self.pad_to
        full, local = tuple(self.full_shape), self.local_shape

        def take(t: Any) -> torch.Tensor:
            shape = tuple(t.shape)
            if shape == local and local != full:
                return t if isinstance(t, torch.Tensor) else t[...]
            if shape != full:
                raise ValueError(f"expected a tensor of shape {list(full)} (or {list(local)} pre-sharded), got "
                                 f"{list(shape)}")
            lead = (slice(None),) * dim
            parts = [t[lead + (slice(a, b),)] for a, b in ranges]
            out = parts[0] if len(parts) == 1 else torch.cat(parts, dim)
            if pad_to and out.shape[dim] < pad_to:
                pad = list(out.shape)
                pad[dim] = pad_to - out.shape[dim]
                out = torch.cat([out, out.new_zeros(pad)], dim)
            return out

        return take


@dataclass
class LinearEdit:
    """colwise: output features split (no collective); rowwise: input features split, all-reduce after, bias added
    once after it; gather: output features split, all-gather of the last dim after (sliced back to `full_out`)."""

    node: str
    style: str
    full_out: int


@dataclass
class ArgEdit:
    """A literal argument the split changes: a head count in a view, the bounds of a slice of a fused output."""

    node: str
    index: int
    value: Any


@dataclass
class MoeEdit:
    """ep: this rank's experts [lo, hi) (ids shifted by -lo; others ignored); tp: every expert split. Both end in one
    all-reduce."""

    node: str
    mode: str
    lo: int
    hi: int


@dataclass
class EmbeddingEdit:
    """Vocabulary-parallel lookup: this rank's rows [start, start + rows) (padded), masked lookup + all-reduce."""

    node: str
    start: int
    rows: int


@dataclass
class ShardPlan:
    rank: int
    world_size: int
    splits: dict[str, WeightSplit] = field(default_factory=dict)
    linears: list[LinearEdit] = field(default_factory=list)
    args: list[ArgEdit] = field(default_factory=list)
    moe: list[MoeEdit] = field(default_factory=list)
    embeddings: list[EmbeddingEdit] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)  # one row per sharded or kept node, for the report
    notes: list[str] = field(default_factory=list)  # plan entries that matched nothing, options not applied, ...

    def add_split(self, split: WeightSplit) -> None:
        self.splits[split.name] = split

    def num_edits(self) -> int:
        return len(self.linears) + len(self.moe) + len(self.embeddings)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.decisions:
            out[d["style"]] = out.get(d["style"], 0) + 1
        return out

    def collectives(self) -> dict[str, int]:
        reduce = sum(e.style == "rowwise" for e in self.linears) + len(self.moe) + len(self.embeddings)
        return {"all_reduce": reduce, "all_gather": sum(e.style == "gather" for e in self.linears)}

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))
        coll = self.collectives()
        fallbacks = sum(1 for d in self.decisions if d.get("fallback"))
        return (f"world_size {self.world_size}: {counts}; {coll['all_reduce']} all-reduce, {coll['all_gather']} "
                f"all-gather per forward; {fallbacks} fallback(s)")

    def report(self) -> dict:
        return {"world_size": self.world_size, "rank": self.rank, "summary": self.summary(), "counts": self.counts(),
                "collectives": self.collectives(), "decisions": self.decisions, "notes": self.notes}
