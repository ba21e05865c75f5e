"""The generation check of `ad build --verify`: what the runtime will do, step by step, against HF's greedy decoding.

A few prompts of different lengths (crossing page boundaries) join one after another, so steps mix a new prefill with
the others' decodes; each then decodes a few tokens (teacher-forced with HF's greedy tokens, so one wrong step does
not hide the next); the sequences stop one after another, so the last steps decode a single sequence (the
single-token GEMV path, and CUDA-graph replay at batch 1 and padded batches on a GPU). With chunked prefill enabled,
prompts arrive in chunks of a few tokens. Every step's logits are compared with HF's for the same tokens; greedy
tokens must agree wherever HF's choice is decisive (top-1 ahead of top-2 by more than the tolerance allows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn



@dataclass
class Trajectory:
    prompt: list[int]
    tokens: list[int]  # HF's greedy tokens after the prompt (fed back one by one)
    ref_logits: torch.Tensor  # [len(tokens), vocab] float32: HF's logits before each token


@dataclass
class GenerationResult:
    max_rel_err: float
    token_mismatches: int
    steps: int
    details: list[str] = field(default_factory=list)


def plan_prompts(vocab: int, page_size: int, max_seq_len: int, max_batch: int, max_tokens: int, seed: int,
                 chunked: bool) -> list[tuple[list[int], int]]:
    """(prompt, tokens to generate) per sequence: lengths around page boundaries, shorter ones generating less."""
    gen = [6, 4, 3][: max(1, min(3, max_batch))]
    room = max_seq_len - max(gen) - 1
    lengths = [page_size + 3, 2, 2 * page_size + 1]
    if not chunked:
        lengths = [min(n, max(1, max_tokens - 2 * len(gen))) for n in lengths]
    lengths = [max(1, min(n, room)) for n in lengths]
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (n,), generator=g).tolist(), k) for n, k in zip(lengths, gen)]


def hf_trajectories(reference: nn.Module, plan: list[tuple[list[int], int]], device: torch.device) -> list[Trajectory]:
    """HF greedy decoding, one sequence at a time (no padding on the reference side). Every step reruns the whole
    context without HF's cache: that forward is the reference the logits rows use too, and some HF cached paths
    drift from it (Bamba's Mamba2 decode: ~5e-3 relative in float32), which would fail a correct build."""
    trajs = []
    for prompt, n in plan:
        ids = torch.tensor([prompt], device=device)
        tokens, logits = [], []
        with torch.no_grad():
            for _ in range(n):
                step = reference(input_ids=ids, use_cache=False).logits[0, -1].float()
                logits.append(step)
                tokens.append(int(step.argmax()))
                ids = torch.cat([ids, torch.tensor([[tokens[-1]]], device=device)], dim=1)
        trajs.append(Trajectory(prompt, tokens, torch.stack(logits)))
    return trajs


@dataclass
class _Seq:
    traj: Trajectory
    pages: list[int]
    fed: int = 0  # tokens of prompt + generated tokens in the cache
    produced: int = 0  # logits rows compared so far

    @property
    def context(self) -> list[int]:
        return self.traj.prompt + self.traj.tokens

    @property
    def done(self) -> bool:
        return self.produced == len(self.traj.tokens)


def _step_batch(active: list[_Seq], budget: int, chunk: int) -> tuple[list[tuple[_Seq, int]], int]:
    """This step's (sequence, new tokens) within `budget` tokens, ordered as the runtime orders them: prefills (and
    prompt chunks) first, then single tokens after a cached context (decodes)."""
    picked = []
    for s in active:
        left = len(s.traj.prompt) - s.fed
        n = min(left, chunk, budget) if left > 0 else min(1, budget)
        if n > 0:
            picked.append((s, n))
            budget -= n
    prefill = [(s, n) for s, n in picked if not (n == 1 and s.fed > 0)]
    decode = [(s, n) for s, n in picked if n == 1 and s.fed > 0]
    return prefill + decode, len(prefill)


def run_generation(model: Callable, iface: Any, trajs: list[Trajectory], chunk: int,
                   compare: Callable[[torch.Tensor, torch.Tensor], float], decisive: float) -> GenerationResult:
    """Drive `model` through the cache interface like the runtime does; compare every step with the trajectories."""
    info = iface.info
    per_seq = [-(-(len(t.prompt) + len(t.tokens)) // info.page_size) for t in trajs]
    needed = sum(per_seq)
    temporary = iface.num_pages < needed
    old = iface.num_pages
    if temporary:
        iface.allocate(needed)
    try:
        starts = [sum(per_seq[:i]) for i in range(len(trajs))]
        seqs = [_Seq(t, list(range(s, s + n))) for t, s, n in zip(trajs, starts, per_seq)]
        return _drive(model, iface, seqs, chunk, compare, decisive)
    finally:
        if temporary:
            iface.free() if old == 0 else iface.allocate(old)


def _drive(model: Callable, iface: Any, seqs: list[_Seq], chunk: int, compare: Callable, decisive: float
           ) -> GenerationResult:
    info, worst, mismatches, steps, details = iface.info, 0.0, 0, 0, []
    for step in range(10_000):
        active = [s for s in seqs[: step + 1] if not s.done]  # sequence i joins at step i
        if not active:
            break
        batch, num_prefill = _step_batch(active, info.max_num_tokens, chunk)
        info.set_batch([s.context[s.fed: s.fed + n] for s, n in batch], [s.fed for s, _ in batch],
                       [s.pages for s, _ in batch], num_prefill=num_prefill,
                       slots=[seqs.index(s) for s, _ in batch])  # a sequence keeps its state slot, as at run time
        with torch.no_grad():
            logits = iface.forward(model).float()  # [B, vocab]: the last token of each sequence
        steps += 1
        for row, (s, n) in enumerate(batch):
            s.fed += n
            if s.fed < len(s.traj.prompt):
                continue  # a prompt chunk: no token yet
            ref = s.traj.ref_logits[s.produced].to(logits.device)
            err = compare(logits[row], ref)
            worst = max(worst, err)
            top2 = ref.topk(2).values
            if int(logits[row].argmax()) != s.traj.tokens[s.produced] and float(top2[0] - top2[1]) > decisive:
                mismatches += 1
                details.append(f"step {steps}: sequence {seqs.index(s)} token {s.produced} differs from HF's")
            s.produced += 1
    return GenerationResult(worst, mismatches, steps, details)
