"""CUDA graphs over the cached graph (compile backends torch-cudagraph and torch-opt).

Decode: one graph per batch size in the ladder, captured at build time over the sequence info's persistent buffers
(the views of a batch of `bs` always start at the same addresses; `cache_loc` is passed at full capacity so its
shape does not depend on the pages in use). A decode-only batch of B sequences replays the smallest graph with
bs >= B: rows B..bs-1 repeat sequence 0 exactly (same token, position and pages, so they write the same values to
the same cache slot) but own the scratch state slot (a state update read twice would run twice), and their outputs
are dropped.

Prefill (so a short prompt's TTFT is kernel time, not the eager graph walk): one graph per (sequences, tokens)
bucket, for graphs whose every input lives on the device (no `*_host` metadata: no host-side planning, no
stateful mixer). A batch of B sequences / T tokens pads to the smallest bucket: tokens T.. are position 0 of no
sequence (their cache row is -1, never written, their outputs unused) and sequences B.. are empty. Larger batches,
and batches asking for more than one logit row per sequence, run the model eagerly.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from autodeploy_cli.ops import graph_hooks
from autodeploy_cli.ops.batch import BATCH_INFO, FIELDS


def default_ladder(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to 128, then every 64, plus max_batch_size (largest first)."""
    sizes = {1, 2, 4, 8} | set(range(16, 129, 16)) | set(range(192, max_batch_size + 1, 64)) | {max_batch_size}
    return sorted((s for s in sizes if s <= max_batch_size), reverse=True)


def clean_sizes(sizes: Optional[Sequence[int]], max_batch_size: int) -> list[int]:
    if not sizes:
        return default_ladder(max_batch_size)
    return sorted({min(max(1, int(s)), max_batch_size) for s in sizes}, reverse=True)


class CudaGraphModel:
    """Callable stand-in for the model: replays a captured graph for decode-only batches, else runs `model`."""

    def __init__(self, model: Callable, iface: Any, batch_sizes: Sequence[int],
                 prefill_buckets: Sequence[tuple[int, int]] = ()):
        self.model = model
        self.iface = iface
        self.info = iface.info
        self.batch_sizes = sorted(batch_sizes)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self.prefill_buckets = sorted(prefill_buckets, key=lambda k: (k[1], k[0]))  # (seqs, tokens), fewest first
        self.prefill_graphs: dict[tuple[int, int], tuple[Any, Any]] = {}
        self.pool = None
        self.replays = 0
        self.prefill_replays = 0
        self.eager_calls = 0

    # --- padded static views ------------------------------------------------------------------------------------
    def _static_args(self, bs: int, tokens: Optional[int] = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Graph inputs by position and name over the persistent buffers: `bs` sequences, `tokens` (default bs)
        tokens, one gathered logit row per sequence."""
        info, out, named = self.info, [], {}
        tokens = bs if tokens is None else tokens
        for name in self.iface.input_names:
            if name in self.iface.caches:
                t = self.iface.caches[name]
            elif name in getattr(self.iface, "states", {}):  # per-sequence state slots (stateful mixers)
                t = self.iface.states[name]
            elif name in self.iface.buffers:
                t = self.iface.buffers[name]
            elif name == BATCH_INFO:
                t = info.batch_info
            else:
                host = name.endswith("_host")
                base = name[:-5] if host else name
                full = (info._host_views if host else info._dev_views)[base]
                size = FIELDS[base].size
                n = {"tokens": tokens, "seqs": bs, "seqs+1": bs + 1, "pages": full.shape[0]}[size]
                if base == "logits_gather_idx":
                    n = bs
                t = full[:n]
                if base in ("input_ids", "position_ids"):
                    t = t.view(1, -1)
            out.append(t)
            named[name] = t
        return out, named

    def _pad(self, B: int, bs: int) -> None:
        """Rows B..bs-1 of the host buffer repeat sequence 0; then one more H2D copy of the buffer."""
        f, info = self.info._np, self.info
        P = info.num_pages_used
        n0 = int(f["pages_per_seq"][0])
        k = np.arange(1, bs - B + 1)
        f["input_ids"][B:bs] = f["input_ids"][0]
        f["position_ids"][B:bs] = f["position_ids"][0]
        f["logits_gather_idx"][B:bs] = np.arange(B, bs)
        for name in ("seq_len", "input_pos", "seq_len_with_cache", "pages_per_seq", "last_page_len"):
            f[name][B:bs] = f[name][0]
        f["slot_idx"][B:bs] = info.pad_slot  # state updates are not idempotent: padded rows write the scratch slot
        f["cu_seqlen"][B + 1: bs + 1] = B + k
        f["cu_num_pages"][B + 1: bs + 1] = P + k * n0
        f["cache_loc"][P: P + (bs - B) * n0] = np.tile(f["cache_loc"][:n0], bs - B)
        info.copy_to_device()  # re-applies a device-side token feed; padded rows then copy row 0's token
        ids = info._dev_views["input_ids"]
        ids[B:bs].copy_(ids[0:1].expand(bs - B))

    def _pad_prefill(self, B: int, T: int, bs: int, tokens: int) -> None:
        """Tokens T..tokens-1 belong to no sequence, sequences B..bs-1 are empty; then one more H2D copy."""
        f, info = self.info._np, self.info
        P = info.num_pages_used
        f["input_ids"][T:tokens] = 0
        f["position_ids"][T:tokens] = 0
        f["logits_gather_idx"][B:bs] = T - 1
        for name in ("seq_len", "input_pos", "seq_len_with_cache", "pages_per_seq", "last_page_len"):
            f[name][B:bs] = 0
        f["slot_idx"][B:bs] = info.pad_slot
        f["cu_seqlen"][B + 1: bs + 1] = T
        f["cu_num_pages"][B + 1: bs + 1] = P
        info.copy_to_device()

    # --- capture ------------------------------------------------------------------------------------------------
    def _capture_one(self, args: list[torch.Tensor], stream: torch.cuda.Stream, bs: int) -> tuple[Any, Any]:
        graph_hooks.set_capture_batch(bs)
        try:
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: lazy init, autotuning, torch.compile
                    self.model(*args)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                out = self.model(*args)
        finally:
            graph_hooks.set_capture_batch(None)
        if self.pool is None:
            self.pool = g.pool()
        return g, out

    def _replay(self, entry: tuple[Any, Any], args: list[torch.Tensor]) -> Any:
        g, out = entry
        g.replay()
        return out

    def capture(self) -> None:
        info = self.info
        stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        ps = info.page_size
        for bs, tokens in reversed(self.prefill_buckets):  # largest first: the pool fits every smaller graph
            lens = [tokens - (bs - 1)] + [1] * (bs - 1)  # any batch of this shape: launches depend on shapes only
            pages, start = [], 0
            for n in lens:
                pages.append(list(range(start, start + -(-n // ps))))
                start += len(pages[-1])
            info.set_batch([[0] * n for n in lens], [0] * bs, pages, num_prefill=bs)
            args, _ = self._static_args(bs, tokens)
            self.prefill_graphs[(bs, tokens)] = self._capture_one(args, stream, bs)
        for bs in sorted(self.batch_sizes, reverse=True):
            info.set_batch([[0]] * bs, [0] * bs, [[0]] * bs, num_prefill=0)
            args, _ = self._static_args(bs)
            self.graphs[bs] = self._capture_one(args, stream, bs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    # --- run ----------------------------------------------------------------------------------------------------
    def graph_batch(self, B: int) -> Optional[int]:
        for bs in self.batch_sizes:
            if bs >= B:
                return bs
        return None

    def prefill_bucket(self, B: int, T: int) -> Optional[tuple[int, int]]:
        for bs, tokens in self.prefill_buckets:
            if bs >= B and tokens >= T and tokens > bs:  # tokens > bs: the graph took the prefill path
                return bs, tokens
        return None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        info = self.info
        B, T = info.num_seqs, info.num_tokens
        if info.num_prefill == 0 and T == B:
            bs = self.graph_batch(B)
            if bs is not None:
                return self._run_decode(B, bs)
        elif self.prefill_graphs and info.num_gather == B:
            key = self.prefill_bucket(B, T)
            if key is not None:
                self._pad_prefill(B, T, *key)
                out = self._replay(self.prefill_graphs[key], self._static_args(*key)[0])
                self.prefill_replays += 1
                return out[:, :B]
        self.eager_calls += 1
        return self.model(*args)

    def _run_decode(self, B: int, bs: int) -> torch.Tensor:
        if bs > B:
            self._pad(B, bs)
        graph_args, named = self._static_args(bs)
        graph_hooks.set_capture_batch(bs)
        graph_hooks.run_pre_replay_hooks(bs, named)
        graph_hooks.set_capture_batch(None)
        out = self._replay(self.graphs[bs], graph_args)
        self.replays += 1
        return out[:, :B]


def default_prefill_tokens(max_tokens: int) -> list[int]:
    """16, 32, 48, 64, 96, 128, ... (powers of two and 1.5x between them) up to max_tokens."""
    sizes, p = [], 16
    while p <= max_tokens:
        sizes += [p] + ([p * 3 // 2] if p * 3 // 2 <= max_tokens and p >= 32 else [])
        p *= 2
    return sizes


def prefill_buckets(iface: Any, tokens: Optional[Sequence[int]], max_seqs: int) -> tuple[list[tuple[int, int]], str]:
    """(seqs, tokens) buckets to capture, and why there are none when the graph cannot replay a prefill."""
    host = [n for n in iface.input_names if n.endswith("_host")]
    if host:
        return [], f"no prefill CUDA graphs: the graph reads host metadata ({', '.join(sorted(set(host))[:3])})"
    info = iface.info
    limit = min(info.max_num_tokens, info.max_seq_len)
    sizes = default_prefill_tokens(min(limit, 2048)) if tokens is None else sorted({int(t) for t in tokens})
    seqs = [s for s in (1, 2, 4, 8, 16) if s <= min(max_seqs, info.max_batch_size)]
    pages_needed = lambda t: -(-t // info.page_size) + 16  # noqa: E731 - one sequence's pages + a margin
    buckets = [(b, t) for t in sizes for b in seqs if b < t <= limit and pages_needed(t) <= iface.num_pages]
    return buckets, ""
