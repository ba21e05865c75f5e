"""The flattened batch the cached graph reads (SequenceInfo); the caches live in `ops/cache.py`.

The runtime schedules a batch of sequences; every step becomes ONE flat batch: the tokens of all sequences back to
back as `input_ids [1, T]` (so one graph shape serves prefill, decode and mixed batches), plus per-sequence metadata.
Prefill (context) sequences come first, then decode sequences (one token each).

Every field lives in one preallocated host buffer (pinned on GPU) at its maximum size; a step fills it on the host
and moves it to the device with ONE copy. The graph gets views sized to the current batch. Field `x` is also
available as `x_host` (the host copy, never synchronises) for backends that plan on the CPU.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch



@dataclass(frozen=True)
class Field:
    dtype: torch.dtype
    size: str  # capacity kind: tokens | seqs | seqs+1 | pages
    doc: str


# T = tokens this step, B = sequences this step, P = pages of all sequences this step
FIELDS: dict[str, Field] = {
    "input_ids": Field(torch.int64, "tokens", "[1, T] token ids of every scheduled token, sequence after sequence"),
    "position_ids": Field(torch.int64, "tokens", "[1, T] position of each token: input_pos[b] + offset in the chunk"),
    "logits_gather_idx": Field(torch.int64, "tokens", "[G] flat token indices whose logits the graph returns: the "
                               "last token of each sequence (G = B) at run time, every token in the verify probe"),
    "seq_len": Field(torch.int32, "seqs", "[B] new tokens of each sequence in this step"),
    "input_pos": Field(torch.int32, "seqs", "[B] tokens of each sequence already in the KV cache before this step"),
    "cu_seqlen": Field(torch.int32, "seqs+1", "[B+1] prefix sum of seq_len: sequence b owns tokens "
                       "cu_seqlen[b]:cu_seqlen[b+1]"),
    "seq_len_with_cache": Field(torch.int32, "seqs", "[B] input_pos + seq_len: KV length after this step"),
    "pages_per_seq": Field(torch.int32, "seqs", "[B] pages of each sequence = ceil(seq_len_with_cache / page_size)"),
    "cu_num_pages": Field(torch.int32, "seqs+1", "[B+1] prefix sum of pages_per_seq: sequence b's pages are "
                          "cache_loc[cu_num_pages[b]:cu_num_pages[b+1]]"),
    "last_page_len": Field(torch.int32, "seqs", "[B] tokens in each sequence's last page after this step "
                           "(1..page_size)"),
    "slot_idx": Field(torch.int32, "seqs", "[B] state slot of each sequence (stateful mixers: SSM, conv, delta "
                      "rule); two running sequences never share a slot"),
    "cache_loc": Field(torch.int32, "pages", "[P] page ids of all sequences, back to back (ragged by cu_num_pages); "
                       "two sequences never share a page"),
}
# host only: [num_seqs, num_tokens, num_prefill, num_prefill_tokens, num_decode, max_q_len, max_kv_len]
BATCH_INFO = "batch_info_host"
BATCH_INFO_KEYS = ("num_seqs", "num_tokens", "num_prefill", "num_prefill_tokens", "num_decode", "max_q_len",
                   "max_kv_len")
_NP = {torch.int64: np.int64, torch.int32: np.int32}


class SequenceInfo:
    """Preallocated batch metadata. `set_batch` fills it; `arg(name)` returns the device view for the graph."""

    def __init__(self, max_batch_size: int, max_seq_len: int, max_num_tokens: int, page_size: int,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.page_size = page_size
        self.max_num_tokens = max(1, min(max_num_tokens, max_batch_size * max_seq_len))
        self.max_pages_per_seq = -(-max_seq_len // page_size)
        capacity = {"tokens": self.max_num_tokens, "seqs": max_batch_size, "seqs+1": max_batch_size + 1,
                    "pages": max_batch_size * self.max_pages_per_seq}
        # int64 fields first so every field stays 8-byte aligned inside one byte buffer
        order = sorted(FIELDS, key=lambda n: FIELDS[n].dtype != torch.int64)
        self._layout: dict[str, tuple[int, int]] = {}  # name -> (byte offset, capacity)
        offset = 0
        for name in order:
            n = capacity[FIELDS[name].size]
            self._layout[name] = (offset, n)
            offset += -(-n * FIELDS[name].dtype.itemsize // 8) * 8
        pin = self.device.type == "cuda"
        self._host = torch.zeros(offset, dtype=torch.uint8, pin_memory=pin)
        self._dev = self._host if self.device.type == "cpu" else torch.zeros(offset, dtype=torch.uint8,
                                                                              device=self.device)
        self._np = {name: self._view(self._host, name).numpy() for name in FIELDS}
        self._host_views = {name: self._view(self._host, name) for name in FIELDS}
        self._dev_views = {name: self._view(self._dev, name) for name in FIELDS}
        self.batch_info = torch.zeros(len(BATCH_INFO_KEYS), dtype=torch.int64)  # host
        self._batch_info_np = self.batch_info.numpy()
        self.num_seqs = self.num_tokens = self.num_pages_used = self.num_gather = 0
        self.num_prefill = 0
        self.pad_slot = max_batch_size  # the scratch state slot of padded CUDA-graph rows (see ops/cache.py)
        self._copied: Optional[torch.cuda.Event] = None  # the last H2D copy of the host buffer
        self._feed: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # device-side input_ids fill (feed_tokens)

    def _view(self, buf: torch.Tensor, name: str) -> torch.Tensor:
        off, n = self._layout[name]
        dtype = FIELDS[name].dtype
        return buf[off: off + n * dtype.itemsize].view(dtype)

    # --- filling -------------------------------------------------------------------------------------------------
    def set_batch(self, tokens: Sequence[Sequence[int]], input_pos: Sequence[int], pages: Sequence[Sequence[int]],
                  num_prefill: int, gather: str | Sequence[int] = "last",
                  position_ids: Optional[Sequence[Sequence[int]]] = None,
                  slots: Optional[Sequence[int]] = None) -> None:
        """Fill the host buffer for one step and copy it to the device (one copy).

        tokens[b]: the new token ids of sequence b (prefill sequences first: the first `num_prefill`); input_pos[b]:
        tokens already cached; pages[b]: every page sequence b owns (covering input_pos + len(tokens[b]));
        gather: "last" (last token of each sequence), "all", or explicit flat indices; slots[b]: the state slot of
        sequence b (default: slot b).
        """
        if self._copied is not None:  # the previous step's copy may still read the host buffer (overlapped steps)
            self._copied.synchronize()
        self._feed = None
        B = len(tokens)
        seq_len = np.fromiter(map(len, tokens), np.int64, B)
        T = int(seq_len.sum())
        n_pages = [len(p) for p in pages]
        P = sum(n_pages)
        if B == 0 or B > self.max_batch_size or T > self.max_num_tokens or min(seq_len) < 1:
            raise ValueError(f"batch of {B} sequences / {T} tokens outside 1..{self.max_batch_size} / "
                             f"1..{self.max_num_tokens} (or an empty sequence)")
        ip = np.fromiter(input_pos, np.int64, B)
        cu = np.zeros(B + 1, np.int64)
        np.cumsum(seq_len, out=cu[1:])
        f = self._np
        f["input_ids"][:T] = np.fromiter(itertools.chain.from_iterable(tokens), np.int64, T)
        if position_ids is None:
            f["position_ids"][:T] = np.arange(T) - np.repeat(cu[:-1] - ip, seq_len)
        else:
            f["position_ids"][:T] = np.fromiter(itertools.chain.from_iterable(position_ids), np.int64, T)
        slwc = ip + seq_len
        f["seq_len"][:B] = seq_len
        f["input_pos"][:B] = ip
        f["cu_seqlen"][: B + 1] = cu
        f["seq_len_with_cache"][:B] = slwc
        f["pages_per_seq"][:B] = n_pages
        f["cu_num_pages"][0] = 0
        np.cumsum(n_pages, out=f["cu_num_pages"][1: B + 1])
        f["last_page_len"][:B] = (slwc - 1) % self.page_size + 1
        f["slot_idx"][:B] = np.arange(B) if slots is None else np.fromiter(slots, np.int32, B)
        f["cache_loc"][:P] = np.fromiter(itertools.chain.from_iterable(pages), np.int32, P)
        if isinstance(gather, str):
            idx = cu[1:] - 1 if gather == "last" else np.arange(T)
        else:
            idx = np.asarray(gather, np.int64)
        f["logits_gather_idx"][: len(idx)] = idx
        pre_tokens = int(seq_len[:num_prefill].sum())
        self._batch_info_np[:] = (B, T, num_prefill, pre_tokens, B - num_prefill, seq_len.max(), slwc.max())
        self.num_seqs, self.num_tokens, self.num_pages_used, self.num_gather = B, T, P, len(idx)
        self.num_prefill = num_prefill
        self.copy_to_device()  # the one H2D copy of the step

    def copy_to_device(self) -> None:
        """Host buffer -> device (async on CUDA; an event marks when the host buffer may be written again)."""
        if self._dev is not self._host:
            self._dev.copy_(self._host, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        self.apply_token_feed()

    def feed_tokens(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """input_ids[dst] = src on the device, after the copy: tokens the previous step sampled on the GPU and the
        host has not read yet (their host slots hold placeholders). Kept until the next set_batch."""
        self._feed = (dst, src)
        self.apply_token_feed()

    def apply_token_feed(self) -> None:
        if self._feed is not None:
            dst, src = self._feed
            self._dev_views["input_ids"].index_copy_(0, dst, src)

    # --- one step's batch for the other ranks (rank 0 broadcasts it; autodeploy_cli.distributed.broadcast) -------
    def step_counts(self) -> list[int]:
        """Sizes of the current batch: [num_seqs, num_tokens, num_pages_used, num_gather, num_prefill]."""
        return [self.num_seqs, self.num_tokens, self.num_pages_used, self.num_gather, self.num_prefill]

    def _step_parts(self) -> list[torch.Tensor]:
        parts = [self._host_views[name][: self._count(name)].view(torch.uint8) for name in FIELDS]
        return parts + [self.batch_info.view(torch.uint8)]

    def pack_step(self) -> torch.Tensor:
        """The used part of every field and batch_info_host, back to back: one uint8 host tensor."""
        return torch.cat(self._step_parts())

    def unpack_step(self, counts: Sequence[int], payload: torch.Tensor) -> None:
        """Make the batch another rank packed (`pack_step`, `step_counts`) this one: host buffer, then one copy."""
        if self._copied is not None:
            self._copied.synchronize()
        self.num_seqs, self.num_tokens, self.num_pages_used, self.num_gather, self.num_prefill = map(int, counts)
        self._feed = None
        offset = 0
        for part in self._step_parts():
            part.copy_(payload[offset: offset + part.numel()])
            offset += part.numel()
        self.copy_to_device()

    @property
    def token_feed(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(dst, src) of the device-side input_ids fill of this step (`feed_tokens`), or None."""
        return self._feed

    # --- reading -------------------------------------------------------------------------------------------------
    def _count(self, name: str) -> int:
        kind = FIELDS[name].size
        if name == "logits_gather_idx":
            return self.num_gather
        return {"tokens": self.num_tokens, "seqs": self.num_seqs, "seqs+1": self.num_seqs + 1,
                "pages": self.num_pages_used}[kind]

    def arg(self, name: str) -> torch.Tensor:
        """The tensor for graph input `name`, sized to the current batch (`*_host`: the host copy)."""
        if name == BATCH_INFO:
            return self.batch_info
        host = name.endswith("_host")
        base = name[: -len("_host")] if host else name
        if base not in FIELDS:
            raise KeyError(f"unknown sequence-info field {name!r}")
        view = (self._host_views if host else self._dev_views)[base][: self._count(base)]
        return view.view(1, -1) if base in ("input_ids", "position_ids") else view

    @staticmethod
    def is_field(name: str) -> bool:
        return name == BATCH_INFO or name in FIELDS or (name.endswith("_host") and name[:-5] in FIELDS)

    def example(self, name: str) -> torch.Tensor:
        """A small example tensor for graph input `name` (used to give new placeholders a fake value)."""
        if name == BATCH_INFO:
            return torch.zeros(len(BATCH_INFO_KEYS), dtype=torch.int64)
        base = name[:-5] if name.endswith("_host") else name
        shape = (1, 3) if base in ("input_ids", "position_ids") else (3,)
        return torch.zeros(shape, dtype=FIELDS[base].dtype)
