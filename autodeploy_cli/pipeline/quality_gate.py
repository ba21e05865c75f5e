"""The quantization quality gate: logits of a quantized model against the unquantized model, over fixed prompts.

A transform that changes the numerics on purpose (FP8 linears, an FP8 KV cache) names itself in
`ctx.facts.lossy`. From then on `ad build --verify` compares every later transform with the quantized graph (the
usual tight tolerance: a kernel must not add error of its own) and measures the graph against the unquantized HF
eager model (bf16 checkpoint, or the FP8 checkpoint's weights dequantized):

  cosine        mean over the probe positions of the cosine similarity of the logit vectors
  cosine_min    the worst position
  top1          share of positions whose argmax token agrees
  top1_ties     the same, where a different choice counts as a tie when the reference scores it within twice the
                position's logit error (RMS of quantized - reference) of its own best: random-token prompts and
                random-weight models have near-tied candidates that any rounding reorders

The gate passes when cosine >= THRESHOLDS["cosine"] and top1_ties >= THRESHOLDS["top1"] (README: "FP8"). `ad bench
--baseline hf` reports the same numbers for the built engine against the HF model it benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

# FP8 weights + activations keep the logit vectors within ~1% (cosine 0.99+) of the unquantized model's; a wrong
# scale or layout drops the cosine far below (and reorders decisive tokens)
THRESHOLDS = {"cosine": 0.99, "top1": 0.90}
# the generation check of a quantized graph runs against the unquantized model's trajectories: FP8 weights and
# activations (e4m3: u = 2^-4 per element) move each step's logits by a fraction of u, like an FP8 KV cache
# (tolerance.py), and more on random-weight models whose logits are small (measured up to 0.11 on the registry's
# shrunk FP8 entries, 0.23 with an FP8 KV cache too); the term adds to the other bound (independent errors add).
# Tokens must still agree wherever the unquantized model's choice is decisive at the widened bound.
FP8_WEIGHTS_TOLERANCE = 0.2


def probe_batch(vocab: int, seed: int, device: Any, batch: int = 2, seq: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe prompts (the same as `--verify`'s): random token ids [batch, seq] and their positions."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    pos = torch.arange(seq, device=device).unsqueeze(0).expand(batch, seq).contiguous()
    return ids, pos


def compare(out: torch.Tensor, ref: torch.Tensor, thresholds: Optional[dict] = None) -> dict[str, Any]:
    """Cosine similarity and top-1 agreement of logits `out` against `ref` ([..., vocab] each), and the verdict."""
    th = dict(THRESHOLDS if thresholds is None else thresholds)
    o, r = out.float().reshape(-1, out.shape[-1]), ref.float().reshape(-1, ref.shape[-1])
    if o.shape != r.shape:
        return {"cosine": 0.0, "cosine_min": 0.0, "top1": 0.0, "top1_ties": 0.0, "positions": 0, "thresholds": th,
                "ok": False,
                "note": f"logit shapes differ: {tuple(out.shape)} vs {tuple(ref.shape)}"}
    cos = torch.nn.functional.cosine_similarity(o, r, dim=-1)
    choice = o.argmax(-1)
    same = choice == r.argmax(-1)
    noise = 2 * (o - r).pow(2).mean(-1).sqrt()
    tie = r.gather(-1, choice[:, None])[:, 0] >= r.max(-1).values - noise
    row = {"cosine": cos.mean().item(), "cosine_min": cos.min().item(), "top1": same.float().mean().item(),
           "top1_ties": (same | tie).float().mean().item(), "positions": int(o.shape[0]), "thresholds": th}
    row["ok"] = row["cosine"] >= th["cosine"] and row["top1_ties"] >= th["top1"]
    return row


def describe(row: dict) -> str:
    return (f"cosine {row['cosine']:.4f} (min {row['cosine_min']:.4f}), top-1 agreement {row['top1']:.1%} "
            f"({row['top1_ties']:.1%} counting near-ties) over {row['positions']} positions; thresholds cosine >= "
            f"{row['thresholds']['cosine']}, top-1 (near-ties counted) >= {row['thresholds']['top1']:.0%}: "
            f"{'ok' if row['ok'] else 'FAILED'}")


@dataclass
class QualityGate:
    """Held by the verifier: the unquantized logits and the latest measurement against them."""

    unquantized: torch.Tensor
    vs: str = "HF eager model, unquantized"
    final: Optional[dict] = None  # the last verified graph vs the unquantized logits
    lossy: list[str] = field(default_factory=list)  # the lossy transforms seen so far

    def observe(self, name: str, ctx: Any, out: torch.Tensor) -> Optional[dict]:
        """Measure `out` after transform `name`; returns the gate row when `name` changed the numerics on purpose
        (the caller then re-baselines its tight comparison on `out`), else None."""
        lossy = name in ctx.facts.lossy
        if lossy and name not in self.lossy:
            self.lossy.append(name)
        if not self.lossy:
            return None
        self.final = {**compare(out, self.unquantized), "vs": self.vs, "after": name}
        return self.final if lossy else None

    def generation_tolerance(self, tol: Any) -> Any:
        """The generation check's bound once the graph is quantized (it compares with unquantized trajectories)."""
        if not self.lossy:
            return tol
        from autodeploy_cli.pipeline.tolerance import Tolerance

        return Tolerance(tol.bound + FP8_WEIGHTS_TOLERANCE, f"FP8 weights + {tol.reason}, vs the unquantized model")
