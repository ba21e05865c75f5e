"""Turning an attention call with an explicit mask into `torch_attention(is_causal, sliding_window)`.

transformers builds its causal (and sliding-window) masks from the graph inputs with `masking_utils`: a chain of
arange/index/compare/and nodes that looks different in every version and family. Rather than pattern-match that
chain, we *evaluate* it: the mask's ancestor subgraph is copied out, run on CPU with a probe batch (positions
0..S-1), and the result is compared with the causal mask and with causal sliding-window masks. A mask that is
exactly one of those is dropped in favour of the flags (the cached attention kernels implement them natively). An
additive mask whose attended entries are `slope[h] * (k_pos - q_pos)` plus a constant per query row is ALiBi (Bloom,
MPT, Falcon): it becomes `alibi_slopes`, with the slopes read from the evaluated mask, i.e. exactly as HF computed
them. Masks built from buffers (GPT-Neo's and GPT-1's `bias` tril buffers) are evaluated with the buffers' real
values, computed on CPU from the config (`ModelFactory.buffer_values`). Any other mask (padding, a user's custom
mask, one that reads weights) is kept as `attn_mask`, with the reason in the attention node's meta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.log import get_logger
from autodeploy_cli.graph.match import ancestors, arg, static_shape, val

MAX_PROBE_LEN = 4098  # probe length cap: [S, S] masks stay < 100 MB
_INT_LIMIT = 2**31  # larger ints are "to the end" sentinels, not windows


@dataclass(frozen=True)
class MaskInfo:
    """What a mask node computes: `causal` (+ `sliding_window`), or not recognised (`causal` False)."""

    causal: bool
    sliding_window: Optional[int] = None
    reason: str = ""
    alibi_slopes: Optional[tuple[float, ...]] = None  # per query head (ALiBi); None: no position bias


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


def _constant_values(gm: fx.GraphModule, nodes: list[fx.Node], buffers: Any) -> Optional[dict[str, torch.Tensor]]:
    """Real values of the get_attr nodes among `nodes`: constants with data, else buffers from `buffers()` (a lazy
    name -> CPU tensor source); None if any is a weight or has no known value."""
    from autodeploy_cli.graph.core import get_attr_value

    values: dict[str, torch.Tensor] = {}
    params = {name for name, _ in gm.named_parameters()}
    for n in nodes:
        if n.op != "get_attr":
            continue
        target = str(n.target)
        value = get_attr_value(gm, target) if target not in params else None
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            value = (buffers() if buffers is not None else {}).get(target)
        if not isinstance(value, torch.Tensor) or target in params:
            return None  # masks that read weights are not the HF position masks
        values[target] = value.cpu()
    return values


def evaluate_subgraph(gm: fx.GraphModule, out: fx.Node, inputs: list[torch.Tensor],
                      buffers: Any = None) -> Optional[torch.Tensor]:
    """Run the part of `gm` that computes `out` on CPU with `inputs` for the placeholders (None if it cannot).
    buffers: a callable returning real values of meta buffers by name (see `_constant_values`)."""
    from autodeploy_cli.graph.core import retarget_device_kwargs

    nodes = ancestors(out)
    values = _constant_values(gm, nodes, buffers)
    if values is None:
        return None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for p in placeholders:
        env[p] = graph.placeholder(p.name)
    for n in nodes:
        if n.op != "placeholder":
            env[n] = graph.node_copy(n, lambda x: env[x])
    graph.output(env[out])
    sub = fx.GraphModule(values, graph)
    retarget_device_kwargs(sub, torch.device("cpu"))
    try:
        with torch.no_grad():
            result = sub(*inputs)
    except Exception as e:  # noqa: BLE001 - an unevaluable mask is simply kept
        get_logger().debug(f"mask {out.name} could not be evaluated: {type(e).__name__}: {e}")
        return None
    return result if isinstance(result, torch.Tensor) else None


def _heads_rows(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """[h, S, S] (h = 1 or the heads) from a mask broadcastable to [b, h, S, S]; None if it varies over the batch."""
    if mask.dim() < 2:
        return None
    m = mask if mask.dim() >= 3 else mask.unsqueeze(0)
    m = m.reshape(-1, *m.shape[-3:])  # [b, h, S, S]
    if not bool((m == m[:1]).all()):
        return None  # differs across the batch: padding, not positions
    return m[0]


def _alibi_fit(m: torch.Tensor, visible: torch.Tensor) -> tuple[Optional[tuple[float, ...]], str]:
    """Slopes s[h] with m[h, i, j] = s[h] * (j - i) + c[h, i] on the visible entries (least squares in float64 over
    every visible pair, then every entry checked to float32 rounding)."""
    if not bool(visible.diagonal().all()):
        return None, "a query does not attend to itself"
    m = m.double()
    dist = (torch.arange(m.shape[-1]).view(1, -1) - torch.arange(m.shape[-2]).view(-1, 1)).double()  # j - i
    rel = (m - m.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)).masked_fill(~visible, 0.0)  # [h, S, S]
    d = dist.masked_fill(~visible, 0.0)
    slopes = (rel * d).sum((-1, -2)) / (d * d).sum().clamp(min=1.0)  # [h]
    resid = (rel - slopes.view(-1, 1, 1) * d).abs().max().item()
    if resid > 1e-5 * max(1.0, m.masked_fill(~visible, 0.0).abs().max().item()):
        return None, "mask values are not a pure attend/ignore pattern nor an ALiBi bias (slope x distance)"
    if not bool((slopes != 0).any()):
        return None, ""
    return tuple(float(x) for x in slopes.float()), ""


def _pattern(mask: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[tuple[float, ...]], str]:
    """(visible [S, S] bool, ALiBi slopes or None, why not) of a bool mask or an additive one (0 or a position bias
    = attend, very negative = not)."""
    m = _heads_rows(mask)
    if m is None:
        return None, None, "mask differs across the batch (padding)"
    if m.dtype == torch.bool:
        if not bool((m == m[:1]).all()):
            return None, None, "bool mask differs across heads"
        return m[0], None, ""
    if not m.dtype.is_floating_point:
        return None, None, f"mask of dtype {m.dtype}"
    blocked = m <= -1e4
    if not bool((blocked == blocked[:1]).all()):
        return None, None, "masked positions differ across heads"
    visible = ~blocked[0]
    if bool((m.masked_fill(blocked, 0.0) == 0).all()):
        return visible, None, ""
    slopes, why = _alibi_fit(m.float(), visible)
    if why:
        return None, None, why
    return visible, slopes, ""


def classify_mask(gm: fx.GraphModule, mask: fx.Node, cache: Optional[dict] = None) -> MaskInfo:
    """Decide whether `mask` is the causal (sliding-window) mask of the probe positions. Cached per node."""
    if cache is not None and mask in cache:
        return cache[mask]
    info = _classify(gm, mask, (cache or {}).get("buffers"))
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


def _probe_len(gm: fx.GraphModule, nodes: list[fx.Node], ints: set[int]) -> tuple[int, bool]:
    """Probe length: past every int literal (windows) and every mask buffer's size; and whether a buffer is too
    large to probe whole (a window inside it could then hide beyond the probe)."""
    from autodeploy_cli.graph.core import get_attr_value

    sizes = [int(d) for n in nodes if n.op == "get_attr"
             for d in getattr(get_attr_value(gm, str(n.target)), "shape", ())]
    want = max([14] + [i + 2 for i in ints] + [d for d in sizes if d > 1])
    return min(want, MAX_PROBE_LEN), want > MAX_PROBE_LEN and bool(sizes)


def _classify(gm: fx.GraphModule, mask: fx.Node, buffers: Any = None) -> MaskInfo:
    mask = _uniform_where_condition(mask) or mask
    nodes = ancestors(mask)
    ints, offsets = _int_constants(nodes)
    seq, truncated = _probe_len(gm, nodes, ints)
    if _probe_inputs(gm, seq) is None:
        return MaskInfo(False, reason="graph inputs are not (input_ids, position_ids)")
    # past every literal first; masks that only exist up to a maximum length (MPT's ALiBi table of max_seq_len)
    # are probed at that length, then at the shortest probe
    for seq in dict.fromkeys([seq, max([i for i in ints if 14 <= i <= seq], default=14), 14]):
        out = evaluate_subgraph(gm, mask, _probe_inputs(gm, seq), buffers)
        if out is not None and out.dim() >= 2 and out.shape[-1] == seq and out.shape[-2] == seq:
            break
    if out is None or out.dim() < 2 or out.shape[-1] != seq or out.shape[-2] != seq:
        return MaskInfo(False, reason="mask is not a function of the token positions alone (it reads weights, or "
                                      "could not be evaluated)")
    visible, slopes, why = _pattern(out)
    if visible is None:
        return MaskInfo(False, reason=why)
    q = torch.arange(seq).unsqueeze(1)
    k = torch.arange(seq).unsqueeze(0)
    causal = k <= q
    if torch.equal(visible, causal):
        if truncated:
            return MaskInfo(False, reason=f"mask buffer longer than the {MAX_PROBE_LEN}-token probe")
        # a window wider than the probe looks causal; trust a sub/add offset too large to probe as the window
        wide = sorted(w for w in offsets if w > seq - 2)
        return MaskInfo(True, wide[-1] if wide else None, alibi_slopes=slopes)
    window = int(visible[-1].sum())
    if 0 < window < seq and torch.equal(visible, causal & (q - k < window)):
        return MaskInfo(True, window, alibi_slopes=slopes)
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
    sliding_window, alibi, reason = None, None, ""
    if attn_mask is not None and gm is not None:
        info = classify_mask(gm, attn_mask, mask_cache)
        heads = (static_shape(q) or (None,) * 4)[1 if layout == "bnsd" else 2]
        if info.causal and info.alibi_slopes is not None and len(info.alibi_slopes) not in (1, heads):
            info = MaskInfo(False, reason=f"{len(info.alibi_slopes)} ALiBi slopes for {heads} query heads")
        if info.causal:
            if mask_cache is not None:
                mask_cache.setdefault("dropped", []).append(attn_mask)
            attn_mask, is_causal, sliding_window = None, True, info.sliding_window
            if info.alibi_slopes is not None:
                slopes = info.alibi_slopes * (heads if len(info.alibi_slopes) == 1 else 1)
                alibi = _slopes_constant(gm, graph, slopes, (mask_cache or {}).get("weight_hooks"))
        reason = info.reason
    kwargs = dict(attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal, scale=scale, sinks=sinks,
                  sliding_window=sliding_window, logit_cap=logit_cap, layout=layout)
    if alibi is not None:
        kwargs["alibi_slopes"] = alibi
    node = graph.call_function(torch.ops.auto_deploy.torch_attention.default, (q, k, v), kwargs)
    if attn_mask is not None:
        node.meta["ad_mask_reason"] = reason or "the mask is not the causal mask of the token positions"
    return node


def _slopes_constant(gm: fx.GraphModule, graph: fx.Graph, slopes: tuple[float, ...],
                     weight_hooks: Optional[dict] = None) -> fx.Node:
    """A get_attr of a [n_heads] float32 buffer holding the ALiBi slopes. With the pipeline's weight hooks it is a
    meta buffer like the weights, whose values load_weights creates (on the weights' device); without them a real
    CPU tensor."""
    i = 0
    while hasattr(gm, f"alibi_slopes_{i}"):
        i += 1
    name, values = f"alibi_slopes_{i}", torch.tensor(slopes, dtype=torch.float32)
    on_meta = weight_hooks is not None and any(p.device.type == "meta" for p in gm.parameters())
    gm.register_buffer(name, torch.empty(len(slopes), device="meta") if on_meta else values)
    if weight_hooks is not None:
        weight_hooks[name] = lambda tensors, v=values: v.to(next(iter(tensors.values())).device)
    return graph.get_attr(name)


def mask_cache_for(ctx: Any) -> dict:
    """The per-transform cache of `attention_call`: classified masks, plus the context's sources it needs (real
    values of meta buffers, the weight hooks that create the ALiBi slopes at load)."""
    factory = getattr(ctx, "factory", None)
    return {"buffers": getattr(factory, "buffer_values", None), "weight_hooks": getattr(ctx, "weight_hooks", None)}


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
