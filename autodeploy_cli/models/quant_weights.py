"""Reading a quantized checkpoint: its safetensors read lazily by name, FP8 weights kept as FP8 with their scales.

transformers would drop the scales of an FP8 checkpoint (and use the FP8 bytes as weights), so a quantized
checkpoint is read here instead: each tensor on first use, FP8 weights and float32 scales as stored, every other
float tensor in the model dtype. The model's non-persistent buffers (RoPE tables) come from a skeleton model whose
parameters stay on the meta device.

`fp8_linear_tensors` is the one place that turns a linear layer's checkpoint tensors into what the graph holds
(FP8 weight, weight scale in the canonical shape, input scale), checking them, or quantizing a real weight at load.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import copy
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn

from autodeploy_cli.errors import ADError
from autodeploy_cli.models.quant_config import QuantScheme
from autodeploy_cli.ops.quant import FP8, dequantize_weight, quantize_weight

_FP8_HEADER = ("F8_E4M3",)
SCALE_SUFFIXES = ("_scale", "_scale_inv", "scale_ub")


def _is_scale(name: str) -> bool:
    return name.rsplit(".", 1)[-1].endswith(SCALE_SUFFIXES)


class CheckpointTensors(Mapping):
    """name -> tensor over a folder's *.safetensors (sharded with an index or not), loaded on first access."""

    def __init__(self, folder: Path, aliases: Optional[dict] = None):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.device, self.dtype = torch.device("cpu"), torch.float32  # set by on()
        self.aliases = dict(aliases or {})  # tied names -> the stored name
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            raise ADError(f"The quantized checkpoint `{self.folder}` has no *.safetensors files. Point `model` at the "
                          "folder that holds them, or set `skip_loading_weights=true` for random weights.")
        self.file: dict[str, str] = {}
        self.header_dtype: dict[str, str] = {}
        for fname in files:
            with safe_open(str(self.folder / fname), framework="pt") as f:
                for key in f.keys():
                    self.file[key] = fname
                    self.header_dtype[key] = f.get_slice(key).get_dtype()

    def on(self, device: torch.device, dtype: torch.dtype) -> "CheckpointTensors":
        """The same checkpoint, loading to `device` with other floats cast to `dtype` (headers shared)."""
        other = copy.copy(self)
        other.device, other.dtype = device, dtype
        return other

    def float_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the first stored float tensor that is neither FP8 nor a scale (the model's dtype)."""
        names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
        for key, dt in self.header_dtype.items():
            if dt in names and not _is_scale(key):
                return names[dt]
        return None

    def _stored(self, name: str) -> str:
        return name if name in self.file else self.aliases.get(name, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._stored(name) in self.file

    def __iter__(self) -> Iterator[str]:
        return iter(self.file)

    def __len__(self) -> int:
        return len(self.file)

    def is_fp8(self, name: str) -> bool:
        return self.header_dtype.get(self._stored(name)) in _FP8_HEADER

    def where(self, name: str) -> str:
        return str(self.folder / self.file.get(self._stored(name), "?"))

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        stored = self._stored(name)
        if stored not in self.file:
            raise KeyError(name)
        with safe_open(str(self.folder / self.file[stored]), framework="pt", device=str(self.device)) as f:
            t = f.get_tensor(stored)
        if t.dtype == FP8 or not t.is_floating_point():
            return t
        return t.float() if _is_scale(stored) else t.to(self.dtype)


def _checkpoint_of(tensors: Mapping) -> Optional[CheckpointTensors]:
    if isinstance(tensors, CheckpointTensors):
        return tensors
    for m in getattr(tensors, "maps", ()):
        if isinstance(m, CheckpointTensors):
            return m
    return None


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device; buffers are created for real (on the default
    device), so computed tables such as RoPE's inv_freq hold their values."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Parameter names that share one tensor (tied embeddings): every name -> the others' first name."""
    groups: dict[int, list[str]] = collections.defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        groups[id(p)].append(name)
    return {n: names[0] if n != names[0] else names[-1] for names in groups.values() if len(names) > 1 for n in names}


# --- one linear layer -----------------------------------------------------------------------------------------------
def _find(tensors: Mapping, prefix: str, names: tuple[str, ...]) -> Optional[str]:
    return next((f"{prefix}.{n}" for n in names if f"{prefix}.{n}" in tensors), None)


def _fail(tensors: Mapping, scheme: QuantScheme, name: str, what: str) -> ADError:
    ckpt = _checkpoint_of(tensors)
    where = f" (in `{ckpt.where(name)}`)" if ckpt is not None else ""
    return ADError(f"FP8 checkpoint tensor `{name}`{where}: {what}. The quantization config is `{scheme.file}` "
                   f"({scheme.describe()}); re-export the checkpoint, or fix the config so it matches the tensors.")


def _canonical_weight_scale(tensors: Mapping, scheme: QuantScheme, name: str, scale: torch.Tensor,
                            shape: torch.Size) -> torch.Tensor:
    n, k = shape
    if scheme.weights == "block":
        bn, bk = scheme.block  # type: ignore[misc]
        want = (-(-n // bn), -(-k // bk))
        if tuple(scale.shape) != want:
            raise _fail(tensors, scheme, name, f"shape {list(scale.shape)} does not match weight [{n}, {k}] in "
                        f"{bn}x{bk} blocks (expected {list(want)})")
        return scale.float()
    if scale.numel() == 1 and scheme.weights == "tensor":
        return scale.float().reshape(())
    if scale.numel() == n and scheme.weights == "channel":
        return scale.float().reshape(n)
    raise _fail(tensors, scheme, name, f"shape {list(scale.shape)} does not fit a per-{scheme.weights} scale of weight "
                f"[{n}, {k}] (expected {'[] or [1]' if scheme.weights == 'tensor' else f'[{n}] or [{n}, 1]'})")


def fp8_linear_tensors(tensors: Mapping, prefix: str, scheme: QuantScheme
                       ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(fp8 weight, weight scale, input scale or None) of linear `prefix` as the graph holds them.

    An FP8 checkpoint weight must come with its scale(s) of the scheme's shape; a real weight (bf16 checkpoint,
    random init) is quantized here with the scheme's granularity (a static scheme's input scale is then 1.0)."""
    wname = f"{prefix}.weight"
    w = tensors[wname]
    static = scheme.activations == "static"
    if w.dtype != FP8:
        q, scale = quantize_weight(w, scheme.weights, scheme.block)
        in_scale = torch.ones((), dtype=torch.float32, device=w.device) if static else None
        return q, scale.to(w.device), in_scale
    sname = _find(tensors, prefix, scheme.weight_scale_names)
    if sname is None:
        raise _fail(tensors, scheme, wname, "it is FP8 but the checkpoint has no scale for it (looked for "
                    + ", ".join(f"`{prefix}.{n}`" for n in scheme.weight_scale_names) + ")")
    scale = _canonical_weight_scale(tensors, scheme, sname, tensors[sname], w.shape)
    if not static:
        return w, scale, None
    iname = _find(tensors, prefix, scheme.input_scale_names)
    if iname is None:
        raise _fail(tensors, scheme, wname, "the scheme has static activation scales but the checkpoint has none for "
                    "it (looked for " + ", ".join(f"`{prefix}.{n}`" for n in scheme.input_scale_names) + ")")
    in_scale = tensors[iname]
    if in_scale.numel() != 1:
        raise _fail(tensors, scheme, iname, f"shape {list(in_scale.shape)} is not a per-tensor input scale")
    return w, scale, in_scale.float().reshape(())


def real_weight(tensors: Mapping, name: str, scheme: Optional[QuantScheme], dtype: torch.dtype) -> torch.Tensor:
    """A weight in `dtype`: dequantized when the checkpoint holds it in FP8 (for excluded layers and the reference)."""
    w = tensors[name]
    if w.dtype != FP8 or scheme is None:
        return w
    prefix = name.rsplit(".", 1)[0]
    # the weight alone: its input scale does not matter here
    q, scale, _ = fp8_linear_tensors(tensors, prefix, dataclasses.replace(scheme, activations="dynamic"))
    return dequantize_weight(q, scale, scheme.block if scheme.weights == "block" else None, dtype)


def dequantized_model(skeleton: nn.Module, tensors: Mapping, scheme: QuantScheme, dtype: torch.dtype) -> nn.Module:
    """The HF model holding the checkpoint's weights dequantized to `dtype` (the unquantized reference)."""
    state: dict[str, Any] = {}
    for name, p in skeleton.named_parameters():
        if name not in tensors:
            raise ADError(f"The checkpoint `{getattr(_checkpoint_of(tensors), 'folder', '?')}` has no tensor `{name}` "
                          "that the model config expects. Check that the checkpoint matches its config.json.")
        state[name] = real_weight(tensors, name, scheme, dtype).to(dtype)
    skeleton.load_state_dict(state, strict=False, assign=True)
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    return skeleton.eval()


_KV_SCALE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?(k_scale|v_scale|kv_scale)$")


def kv_scales(tensors: CheckpointTensors) -> dict[int, tuple[float, float]]:
    """Layer -> (k_scale, v_scale) from a checkpoint's KV-cache scales: `self_attn.k_proj.k_scale` /
    `v_proj.v_scale` (ModelOpt), `self_attn.attn.k_scale` (vLLM's remapped spelling), `self_attn.k_scale`, or the
    old shared `kv_scale`. A cached value is the FP8 value times its scale."""
    found: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for name in tensors:
        m = _KV_SCALE.search(name)
        if m:
            value = tensors[name].float()
            if value.numel() != 1:
                raise ADError(f"KV-cache scale `{name}` (in `{tensors.where(name)}`) has shape {list(value.shape)}; "
                              "ad reads one scale per layer for k and one for v. Re-export with per-tensor KV scales.")
            found[int(m.group(1))][m.group(2)] = float(value.reshape(()))
    out = {}
    for layer, s in found.items():
        k = s.get("k_scale", s.get("kv_scale", 1.0))
        out[layer] = (k, s.get("v_scale", s.get("kv_scale", 1.0)))
    return out
