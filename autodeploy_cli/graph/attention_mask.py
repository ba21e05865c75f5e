"""Turning an attention call with an explicit mask into `torch_attention(is_causal, sliding_window)`.

transformers builds its causal (and sliding-window) masks from the graph inputs with `masking_utils`: a chain of
arange/index/compare/and nodes that looks different in every version and family. Rather than pattern-match that
chain, we *evaluate* it: the mask's ancestor subgraph is copied out, run on CPU with a probe batch (positions
0..S-1), and the result is compared with the causal mask and with causal sliding-window masks. A mask that is
exactly one of those is dropped in favour of the flags (the cached attention kernels implement them natively); any
other mask (padding, ALiBi, a user's custom mask, one that reads weights) is kept as `attn_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.log import get_logger
from autodeploy_cli.graph.match import ancestors, arg, val

MAX_PROBE_LEN = 4098  # probe length cap: [S, S] masks stay < 100 MB
_INT_LIMIT = 2**31  # larger ints are "to the end" sentinels, not windows


@dataclass(frozen=True)
class MaskInfo:
    """What a mask node computes: `causal` (+ `sliding_window`), or not recognised (`causal` False)."""

    causal: bool
    sliding_window: Optional[int] = None
    reason: str = ""


def _probe_inputs(gm: fx.GraphModule, seq: int) -> Optional[list[torch.Tensor]]:
    """Example values for the graph's placeholders: token ids 0 and positions 0..seq-1 (batch 1)."""
    values = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        v = val(node)
        if v is None or v.dim() != 2 or v.dtype.is_floating_point:
            return None
        if "position" in node.name:
            values.append(torch.arange(seq, dtype=v.dtype).unsqueeze(0))
        else:
            values.append(torch.zeros(1, seq, dtype=v.dtype))
    return values


def _int_constants(nodes: list[fx.Node]) -> tuple[set[int], set[int]]:
    """All int literals in the nodes' arguments, and those that are offsets of a sub/add (window candidates)."""
    ints: set[int] = set()
    offsets: set[int] = set()

    def visit(x: Any, into: set[int]) -> None:
        if isinstance(x, bool):
            return
        if isinstance(x, int) and 1 < abs(x) < _INT_LIMIT:
            into.add(abs(x))
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y, into)

    for n in nodes:
        for a in list(n.args) + list(n.kwargs.values()):
            visit(a, ints)
        if n.op == "call_function" and getattr(n.target, "__name__", "").split(".")[0] in ("sub", "add"):
            for a in n.args[1:]:
                visit(a, offsets)
    return ints, offsets


def evaluate_subgraph(gm: fx.GraphModule, out: fx.Node, inputs: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Run the part of `gm` that computes `out` on CPU with `inputs` for the placeholders (None if it cannot)."""
    from autodeploy_cli.graph.core import retarget_device_kwargs

    nodes = ancestors(out)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for p in placeholders:
        env[p] = graph.placeholder(p.name)
    for n in nodes:
        if n.op == "placeholder":
            continue
        if n.op == "get_attr":
            return None  # masks that read weights or buffers are not the HF causal masks
        env[n] = graph.node_copy(n, lambda x: env[x])
    graph.output(env[out])
    sub = fx.GraphModule(gm, graph)
    retarget_device_kwargs(sub, torch.device("cpu"))
    try:
        with torch.no_grad():
            result = sub(*inputs)
    except Exception as e:  # noqa: BLE001 - an unevaluable mask is simply kept
        get_logger().debug(f"mask {out.name} could not be evaluated: {type(e).__name__}: {e}")
        return None
    return result if isinstance(result, torch.Tensor) else None


def _visible(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """[S, S] bool of attended positions from a bool mask or an additive one (0 = attend, very negative = not)."""
    if mask.dim() < 2:
        return None
    m = mask.reshape(-1, *mask.shape[-2:])
    if not bool((m == m[:1]).all()):
        return None  # differs across batch/heads
    m = m[0]
    if m.dtype == torch.bool:
        return m
    if not m.dtype.is_floating_point:
        return None
    attend, blocked = m == 0, m <= -1e4
    if not bool((attend | blocked).all()):
        return None  # other values (ALiBi, soft bias): not a pure visibility mask
    return attend


def classify_mask(gm: fx.GraphModule, mask: fx.Node, cache: Optional[dict] = None) -> MaskInfo:
    """Decide whether `mask` is the causal (sliding-window) mask of the probe positions. Cached per node."""
    if cache is not None and mask in cache:
        return cache[mask]
    info = _classify(gm, mask)
    if cache is not None:
        cache[mask] = info
    return info


def _uniform_where_condition(mask: fx.Node) -> Optional[fx.Node]:
    """cond for where(cond, c, -big) with a 0-dim c: an additive mask whose attended entries share one value, so
    (softmax being shift-invariant) it attends exactly like the bool mask `cond`. transformers builds its float
    masks this way; c may be a lifted constant whose value export does not know (meta)."""
    if mask.target not in (torch.ops.aten.where.ScalarOther, torch.ops.aten.where.self):
        return None
    cond, keep, other = mask.args[:3]
    keep_val = val(keep) if isinstance(keep, fx.Node) else keep
    other_val = val(other) if isinstance(other, fx.Node) else other
    keep_ok = isinstance(keep, (int, float)) or (isinstance(keep_val, torch.Tensor) and keep_val.dim() == 0)
    other_ok = isinstance(other_val, (int, float)) and other_val <= -1e4
    return cond if keep_ok and other_ok and isinstance(cond, fx.Node) else None


def _classify(gm: fx.GraphModule, mask: fx.Node) -> MaskInfo:
    mask = _uniform_where_condition(mask) or mask
    nodes = ancestors(mask)
    ints, offsets = _int_constants(nodes)
    seq = min(max([14] + [i + 2 for i in ints]), MAX_PROBE_LEN)
    inputs = _probe_inputs(gm, seq)
    if inputs is None:
        return MaskInfo(False, reason="graph inputs are not (input_ids, position_ids)")
    out = evaluate_subgraph(gm, mask, inputs)
    if out is None or out.shape[-1] != seq or out.shape[-2] != seq:
        return MaskInfo(False, reason="mask is not a function of the token positions alone")
    visible = _visible(out)
    if visible is None:
        return MaskInfo(False, reason="mask values are not a pure attend/ignore pattern")
    q = torch.arange(seq).unsqueeze(1)
    k = torch.arange(seq).unsqueeze(0)
    causal = k <= q
    if torch.equal(visible, causal):
        # a window wider than the probe looks causal; trust a sub/add offset too large to probe as the window
        wide = sorted(w for w in offsets if w > seq - 2)
        return MaskInfo(True, wide[-1] if wide else None)
    window = int(visible[-1].sum())
    if 0 < window < seq and torch.equal(visible, causal & (q - k < window)):
        return MaskInfo(True, window)
    return MaskInfo(False, reason="mask is neither causal nor causal sliding-window")


def attention_call(
    graph: fx.Graph,
    q: fx.Node,
    k: fx.Node,
    v: fx.Node,
    attn_mask: Optional[fx.Node] = None,
    *,
    is_causal: bool = False,
    scale: Optional[float] = None,
    logit_cap: Optional[float] = None,
    sinks: Optional[fx.Node] = None,
    layout: str = "bnsd",
    gm: Optional[fx.GraphModule] = None,
    mask_cache: Optional[dict] = None,
) -> fx.Node:
    """Create `torch_attention(q, k, v, ...)` at the graph's insert point; a recognised causal mask becomes flags."""
    from autodeploy_cli.ops import load_ops

    load_ops()
    sliding_window = None
    if attn_mask is not None and gm is not None:
        info = classify_mask(gm, attn_mask, mask_cache)
        if info.causal:
            if mask_cache is not None:
                mask_cache.setdefault("dropped", []).append(attn_mask)
            attn_mask, is_causal, sliding_window = None, True, info.sliding_window
    kwargs = dict(attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal, scale=scale, sinks=sinks,
                  sliding_window=sliding_window, logit_cap=logit_cap, layout=layout)
    return graph.call_function(torch.ops.auto_deploy.torch_attention.default, (q, k, v), kwargs)


def erase_dropped_masks(gm: fx.GraphModule, mask_cache: dict) -> None:
    """Remove the mask computations no attention reads any more, including in-place ops dead-code elimination
    keeps (e.g. detach_ of a lifted constant)."""
    from autodeploy_cli.graph.match import erase_if_unused

    for mask in mask_cache.get("dropped", []):
        if not getattr(mask, "_erased", False):
            erase_if_unused(gm.graph, ancestors(mask))


def sdpa_to_torch_attention(gm: fx.GraphModule, sdpa: fx.Node, k: Optional[fx.Node] = None,
                            v: Optional[fx.Node] = None, mask_cache: Optional[dict] = None) -> fx.Node:
    """A torch_attention node (inserted before `sdpa`) equivalent to the aten SDPA call, with k/v replaced."""
    q = sdpa.args[0]
    k = sdpa.args[1] if k is None else k
    v = sdpa.args[2] if v is None else v
    with gm.graph.inserting_before(sdpa):
        return attention_call(gm.graph, q, k, v, arg(sdpa, 3, "attn_mask"),
                              is_causal=bool(arg(sdpa, 5, "is_causal", False)), scale=arg(sdpa, 6, "scale"),
                              layout="bnsd", gm=gm, mask_cache=mask_cache)
