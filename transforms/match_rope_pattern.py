"""match_rope_pattern: rotary embeddings applied to q and k become one `auto_deploy::torch_rope_*` op per layer.

Three forms are recognised:
  * HF rotate-half: x * unsqueeze(cos, u) + cat(-x[..., d/2:], x[..., :d/2]) * unsqueeze(sin, u)
        -> torch_rope_with_explicit_cos_sin(q, k, cos, sin, u)
  * the same on de-interleaved inputs (DeepSeek: x.view(.., d/2, 2).transpose(-1, -2).reshape(.., d))
        -> torch_rope_with_qk_interleaving(q0, k0, cos, sin, u)
  * complex frequencies: view_as_real(view_as_complex(x.float().reshape(.., -1, 2)) * freqs).flatten(3)
        -> torch_rope_with_complex_freqs(q, k, freqs, u)
  * halves with half-width tables (GPT-OSS): lo, hi = chunk(x, 2, -1);
    cat([lo * c - hi * s, hi * c + lo * s], -1) with c, s of width d/2
        -> torch_rope_with_explicit_cos_sin(q, k, cat([cos, cos], -1), cat([sin, sin], -1), u)  (the same numbers)

Before (one layer, q shown; k has the same chain on %k with the same %c, %s):
    %c = aten.unsqueeze(%cos, 1); %s = aten.unsqueeze(%sin, 1)
    %m1 = aten.mul.Tensor(%q, %c); %x1 = aten.slice.Tensor(%q, 3, 0, 8); %x2 = aten.slice.Tensor(%q, 3, 8, INT_MAX)
    %r = aten.cat([aten.neg(%x2), %x1], -1); %m2 = aten.mul.Tensor(%r, %s); %q_embed = aten.add.Tensor(%m1, %m2)
After:
    %rope = auto_deploy.torch_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 1)
    %q_embed = getitem(%rope, 0); %k_embed = getitem(%rope, 1)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import (
    ALIAS_OPS, CAST_OPS, VIEW_OPS, arg, copy_meta, graph_position, is_last_dim, norm_dim, operands, rank,
    record_miss, replace, skip, split_binary, static_shape,
)
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten
_END = 2**62


@dataclass
class MatchRopeOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads head dims (static sizes) of q and k


@dataclass
class _Rope:
    kind: str  # explicit | interleaved | complex | halves
    x: fx.Node  # the op's input (q or k, de-interleaved source for "interleaved")
    out: fx.Node  # the node whose uses the op's output replaces
    tables: tuple  # (cos, sin) or (freqs,)
    unsqueeze_dim: int
    group: tuple  # matches sharing it belong to one layer (q and k)


def _half_slices(node: Any) -> Optional[tuple[fx.Node, str]]:
    """(x, "lo"|"hi") if node = x[..., :d/2] or x[..., d/2:] on the last dim of x (d static)."""
    if not is_op(node, aten.slice.Tensor):
        return None
    x = node.args[0]
    shape = static_shape(x)
    if shape is None or not shape or shape[-1] is None or not is_last_dim(arg(node, 1, "dim", 0), x):
        return None
    d = shape[-1]
    start, end = arg(node, 2, "start", 0) or 0, arg(node, 3, "end")
    end = _END if end is None else end
    if start == 0 and end == d // 2:
        return x, "lo"
    if start == d // 2 and isinstance(end, int) and end >= d:
        return x, "hi"
    return None


def _rotate_half_source(node: Any) -> Optional[fx.Node]:
    """x if node = cat([-x[..., d/2:], x[..., :d/2]], -1)."""
    if not is_op(node, aten.cat.default) or not is_last_dim(arg(node, 1, "dim", 0), node):
        return None
    parts = node.args[0]
    if len(parts) != 2 or not is_op(parts[0], aten.neg.default):
        return None
    hi, lo = _half_slices(parts[0].args[0]), _half_slices(parts[1])
    if hi is None or lo is None or hi[1] != "hi" or lo[1] != "lo" or hi[0] is not lo[0]:
        return None
    return hi[0]


def _table(node: Any) -> Optional[tuple[fx.Node, int]]:
    """(cos, u) for unsqueeze(cos, u) with u in (1, 2) (the head dim of a 4-D q)."""
    if not is_op(node, aten.unsqueeze.default):
        return None
    dim = norm_dim(arg(node, 1, "dim"), rank(node))
    return (node.args[0], dim) if dim in (1, 2) else None


def _deinterleaved_source(x: fx.Node) -> Optional[fx.Node]:
    """x0 if x = x0.view(b, n, s, d/2, 2).transpose(4, 3).reshape(b, n, s, d)."""
    if not is_op(x, VIEW_OPS) or rank(x) != 4:
        return None
    t = x.args[0]
    if not is_op(t, aten.transpose.int) or {norm_dim(d, rank(t)) for d in t.args[1:3]} != {3, 4}:
        return None
    v = t.args[0]
    shape = static_shape(v)
    if not is_op(v, VIEW_OPS) or shape is None or len(shape) != 5 or shape[-1] != 2 or rank(v.args[0]) != 4:
        return None
    return v.args[0]


def match_explicit(add: fx.Node) -> tuple[Optional[_Rope], str]:
    """x * cos + rotate_half(x) * sin anchored at the add."""
    if not is_op(add, aten.add.Tensor) or rank(add) != 4:
        return None, ""
    a, b = operands(add)
    if not (is_op(a, aten.mul.Tensor) and is_op(b, aten.mul.Tensor)):
        return None, ""
    for m_cos, m_sin in ((a, b), (b, a)):
        rot = split_binary(m_sin, lambda n: _rotate_half_source(n) is not None)
        if rot is None:
            continue
        x = _rotate_half_source(rot[0])
        other = split_binary(m_cos, lambda n: n is x)
        if other is None:
            return None, "rotate_half(x) * sin is not added to x * cos of the same x"
        cos, sin = _table(other[1]), _table(rot[1])
        if cos is None or sin is None or cos[1] != sin[1]:
            return None, "cos/sin are not unsqueezed on the head dim (1 or 2)"
        src = skip(x, ALIAS_OPS)
        inter = _deinterleaved_source(src)
        kind, src = ("interleaved", inter) if inter is not None else ("explicit", src)
        return _Rope(kind, src, add, (cos[0], sin[0]), cos[1], (kind, other[1], rot[1])), ""
    if _rotate_half_source(skip(a)) is None and _rotate_half_source(skip(b)) is None:
        return None, ""
    return None, "rotate_half found but not in x * cos + rotate_half(x) * sin"


def _chunk_half(node: Any) -> Optional[tuple[fx.Node, int]]:
    """(x, 0 | 1) if node = chunk(x, 2, -1)[i] or a half slice of x's last dim."""
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.getitem:
        ch = node.args[0]
        if is_op(ch, aten.chunk.default) and arg(ch, 1, "chunks") == 2 and \
                is_last_dim(arg(ch, 2, "dim", 0), ch.args[0]) and node.args[1] in (0, 1):
            return ch.args[0], node.args[1]
        return None
    half = _half_slices(node)
    return (half[0], 0 if half[1] == "lo" else 1) if half else None


def _half_products(node: fx.Node) -> Optional[list[tuple[tuple[fx.Node, int], tuple[fx.Node, int]]]]:
    """[((x, half), (table, u)), ...] for the two products of a sub/add of half * unsqueezed table."""
    out = []
    for m in operands(node):
        if not is_op(m, aten.mul.Tensor):
            return None
        a, b = operands(m)
        if _chunk_half(a) is not None and _table(b) is not None:
            out.append((_chunk_half(a), _table(b)))
        elif _chunk_half(b) is not None and _table(a) is not None:
            out.append((_chunk_half(b), _table(a)))
        else:
            return None
    return out


def match_halves(cat: fx.Node) -> tuple[Optional[_Rope], str]:
    """cat([lo * c - hi * s, hi * c + lo * s], -1) anchored at the cat (c, s half-width, unsqueezed)."""
    if not is_op(cat, aten.cat.default) or rank(cat) != 4 or not is_last_dim(arg(cat, 1, "dim", 0), cat):
        return None, ""
    parts = cat.args[0]
    if len(parts) != 2 or not is_op(parts[0], aten.sub.Tensor) or not is_op(parts[1], aten.add.Tensor):
        return None, ""
    first, second = _half_products(parts[0]), _half_products(parts[1])
    if first is None or second is None:
        return None, ""
    (lo_c, cos), (hi_s, sin) = first
    second.sort(key=lambda p: -p[0][1])  # hi * c first (the add may hold its products in either order)
    (hi_c, cos2), (lo_s, sin2) = second
    x = lo_c[0]
    if any(h[0] is not x for h in (hi_s, hi_c, lo_s)) or (lo_c[1], hi_s[1], hi_c[1], lo_s[1]) != (0, 1, 1, 0):
        return None, "halves of different tensors in lo * c - hi * s, hi * c + lo * s"
    if cos != cos2 or sin != sin2 or cos[1] != sin[1] or cos[0] is sin[0]:
        return None, "the two halves use different cos/sin tables"
    return _Rope("halves", skip(x, ALIAS_OPS), cat, (cos[0], sin[0]), cos[1], ("halves", cos[0], sin[0])), ""


def match_complex(vr: fx.Node) -> tuple[Optional[_Rope], str]:
    """view_as_real(view_as_complex(x.float().reshape(.., -1, 2)) * freqs).flatten(3) anchored at view_as_real."""
    if not is_op(vr, aten.view_as_real.default):
        return None, ""
    mul = vr.args[0]
    if not is_op(mul, aten.mul.Tensor):
        return None, "view_as_real input is not a complex product"
    split = split_binary(mul, lambda n: is_op(n, aten.view_as_complex.default))
    if split is None:
        return None, "complex product has no view_as_complex(x) operand"
    vc, freqs = split
    pairs = vc.args[0]
    if not is_op(pairs, VIEW_OPS) or (static_shape(pairs) or (0,))[-1] != 2:
        return None, "view_as_complex input is not x.reshape(..., -1, 2)"
    x = skip(pairs.args[0], CAST_OPS + ALIAS_OPS)
    fshape = static_shape(freqs)
    if rank(x) != 4 or fshape is None or len(fshape) != 4:
        return None, "complex RoPE needs 4-D x and 4-D broadcast freqs"
    u = 2 if fshape[2] == 1 else (1 if fshape[1] == 1 else None)
    flat = next(iter(vr.users)) if len(vr.users) == 1 else None
    if u is None or flat is None or not (is_op(flat, VIEW_OPS) or is_op(flat, aten.flatten.using_ints)):
        return None, "complex RoPE output is not flattened back to [.., d]"
    out = flat
    while len(out.users) == 1 and is_op(next(iter(out.users)), CAST_OPS):
        out = next(iter(out.users))
    return _Rope("complex", x, out, (freqs,), u, ("complex", _chain_key(freqs))), ""


def _chain_key(node: Any, depth: int = 6) -> Any:
    """A key equal for nodes that compute the same value by the same ops from the same inputs (Llama-4 slices
    freqs_cis[:, :, None, :] once for q and once for k: one table, two nodes)."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or depth == 0:
        return node
    args = tuple(_chain_key(a, depth - 1) if isinstance(a, fx.Node) else repr(a) for a in node.args)
    return (str(node.target), args, repr(sorted(node.kwargs.items())))


_OPS = {
    "explicit": "torch_rope_with_explicit_cos_sin",
    "interleaved": "torch_rope_with_qk_interleaving",
    "complex": "torch_rope_with_complex_freqs",
    "halves": "torch_rope_with_explicit_cos_sin",
}


def _emit(gm: fx.GraphModule, ropes: list[_Rope], before: fx.Node) -> list[fx.Node]:
    """One op for a q/k pair (or a single tensor, passed as both); its outputs replace the matched nodes."""
    r0 = ropes[0]
    q = r0.x
    k = ropes[1].x if len(ropes) > 1 else r0.x
    tables = list(r0.tables)
    op = getattr(torch.ops.auto_deploy, _OPS[r0.kind]).default
    with gm.graph.inserting_before(before):
        if r0.kind == "complex":
            tables = [gm.graph.call_function(aten.squeeze.dim, (tables[0], r0.unsqueeze_dim))]
            new = [tables[0]]
        elif r0.kind == "halves":  # full-width tables: [c, c] and [s, s] give the rotate-half form's numbers
            tables = [gm.graph.call_function(aten.cat.default, ([t, t], -1)) for t in tables]
            new = list(tables)
        else:
            new = []
        node = copy_meta(gm.graph.call_function(op, (q, k, *tables, r0.unsqueeze_dim)), r0.out)
        outs = [gm.graph.call_function(operator.getitem, (node, i)) for i in range(len(ropes))]
    for rope, out in zip(ropes, outs):  # outside the insert point: `before` itself is erased here
        replace(rope.out, out)
        _drop_empty_cat(out)
        _views_to_reshapes(out)
    return new + [node, *outs]


def _views_to_reshapes(out: fx.Node, depth: int = 3) -> None:
    """HF's views after its RoPE relied on the strides of its own elementwise result (GPT-NeoX-Japanese:
    cat([rope(x), x_pass]).view(b * n, s, d) after a permute); the op's output may be laid out differently, so
    views within a few shape-keeping steps become reshapes (a view where the strides allow, a copy otherwise)."""
    todo, seen = [(out, 0)], set()
    while todo:
        node, d = todo.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if is_op(user, aten.view.default):
                user.target = aten.reshape.default
            elif d < depth and is_op(user, (aten.cat.default,) + ALIAS_OPS):
                todo.append((user, d + 1))


def _drop_empty_cat(out: fx.Node) -> None:
    """Partial rotary with nothing passed through (Phi-3: cat([rope(x[..., :d]), x[..., d:]])) -> just the rope."""
    for user in list(out.users):
        if not is_op(user, aten.cat.default) or len(user.args[0]) != 2 or user.args[0][0] is not out:
            continue
        rest = static_shape(user.args[0][1])
        if rest and is_last_dim(arg(user, 1, "dim", 0), user) and rest[-1] == 0:
            user.replace_all_uses_with(out)


@register("match_rope_pattern")
class MatchRopePattern(BaseTransform):
    options_cls = MatchRopeOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        groups: dict[tuple, list[_Rope]] = {}
        for node in list(gm.graph.nodes):
            matcher = match_complex if is_op(node, aten.view_as_real.default) else \
                match_halves if is_op(node, aten.cat.default) else match_explicit
            rope, why = matcher(node)
            if rope is not None:
                groups.setdefault(rope.group, []).append(rope)
            elif why:
                record_miss(ctx.misses, "rope", node, why)
        count, touched = 0, []
        for ropes in groups.values():
            while ropes:
                pos = graph_position(gm.graph)
                ropes.sort(key=lambda r: pos[r.out])
                pair, ropes = ropes[:2], ropes[2:]
                if len(pair) == 2:
                    first, last = pair
                    inputs = [last.x, *last.tables]
                    if all(pos.get(n, -1) < pos[first.out] for n in inputs):
                        touched += _emit(gm, pair, first.out)  # everything is ready at the earlier match
                        count += 1
                        continue
                    if any(pos[u] < pos[last.out] for u in first.out.users):
                        touched += _emit(gm, [first], first.out)  # the earlier result is used before the later
                        count, pair = count + 1, [last]
                touched += _emit(gm, pair, pair[-1].out)
                count += 1
        return TransformInfo.matched(count, touched)
