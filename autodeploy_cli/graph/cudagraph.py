"""Decode-only CUDA graphs over the cached graph (compile backends torch-cudagraph and torch-opt).

One graph per batch size in the ladder, captured at build time over the sequence info's persistent buffers (the
views of a batch of `bs` always start at the same addresses; `cache_loc` is passed at full capacity so its shape
does not depend on the pages in use). At run time a decode-only batch of B sequences replays the smallest graph
with bs >= B: rows B..bs-1 repeat sequence 0 exactly (same token, position and pages, so they write the same
values to the same cache slot) but own the scratch state slot (a state update read twice would run twice), and
their outputs are dropped. Prefill and mixed batches, and batches larger than
the largest graph, run the model eagerly.
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

    def __init__(self, model: Callable, iface: Any, batch_sizes: Sequence[int]):
        self.model = model
        self.iface = iface
        self.info = iface.info
        self.batch_sizes = sorted(batch_sizes)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self.pool = None
        self.replays = 0
        self.eager_calls = 0

    # --- padded static views ------------------------------------------------------------------------------------
    def _static_args(self, bs: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        info, out, named = self.info, [], {}
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
                n = {"tokens": bs, "seqs": bs, "seqs+1": bs + 1, "pages": full.shape[0]}[size]
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

    # --- capture ------------------------------------------------------------------------------------------------
    def capture(self) -> None:
        info = self.info
        stream = torch.cuda.Stream()
        for bs in sorted(self.batch_sizes, reverse=True):  # largest first: the pool fits every smaller graph
            info.set_batch([[0]] * bs, [0] * bs, [[0]] * bs, num_prefill=0)
            args, _ = self._static_args(bs)
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
            self.graphs[bs] = (g, out)
        torch.cuda.synchronize()

    # --- run ----------------------------------------------------------------------------------------------------
    def graph_batch(self, B: int) -> Optional[int]:
        for bs in self.batch_sizes:
            if bs >= B:
                return bs
        return None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        info = self.info
        B = info.num_seqs
        bs = self.graph_batch(B) if (info.num_prefill == 0 and info.num_tokens == B) else None
        if bs is None:
            self.eager_calls += 1
            return self.model(*args)
        if bs > B:
            self._pad(B, bs)
        _, named = self._static_args(bs)
        graph_hooks.set_capture_batch(bs)
        graph_hooks.run_pre_replay_hooks(bs, named)
        graph_hooks.set_capture_batch(None)
        g, out = self.graphs[bs]
        g.replay()
        self.replays += 1
        return out[:, :B]
