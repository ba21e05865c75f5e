"""Quantization configs: what a checkpoint (or the user) says about FP8, read into one `QuantScheme`.

Sources, first match wins:
  * ModelOpt `hf_quant_config.json` beside config.json: `producer.name: modelopt`, `quantization.quant_algo` FP8
    (per-tensor weights, static per-tensor input scales) or FP8_PER_CHANNEL_PER_TOKEN, `kv_cache_quant_algo`
    FP8, `exclude_modules` (wildcards). Newer ModelOpt also writes `quantization_config.quant_method: modelopt` into
    config.json; it is read the same way.
  * Hugging Face `quantization_config` in config.json: `quant_method: fp8` (weight_scale_inv; `weight_block_size`
    [128, 128] by default, null = per tensor; activation_scheme dynamic or static), `fbgemm_fp8` (per-channel
    weight_scale, dynamic per-token activations), `compressed-tensors` float 8-bit (strategy tensor / channel /
    block; activations static per tensor or dynamic per token / group).
  * the user's `quant_config.quant_algo: FP8` (the TensorRT-LLM LLM-API spelling): quantize a bf16/fp16
    checkpoint (or random weights) at load, per-channel (or per-tensor) weight scales, dynamic per-token
    activation scales.
Exclusions follow the file; a file that names none gets the anchor's always-excluded list (LM head, embeddings,
MoE router gates). A config `ad` cannot run faithfully is refused with the file named, never run as noise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional

from autodeploy_cli.errors import ADError

# the anchor's always-excluded modules (ModelOpt's default export list plus MoE routers)
DEFAULT_EXCLUDE = ("lm_head", "model.embed_tokens", "*.mlp.gate", "*router*", "*block_sparse_moe.gate",
                   "*.mlp.shared_expert_gate")
SUPPORTED = "FP8 (ModelOpt FP8 / FP8_PER_CHANNEL_PER_TOKEN, HF fp8 / fbgemm_fp8 / compressed-tensors float8)"


@dataclass(frozen=True)
class QuantScheme:
    """How the linear layers (and the KV cache) of a model are quantized."""

    source: str  # modelopt | hf-fp8 | fbgemm_fp8 | compressed-tensors | on-the-fly
    file: str  # where it was read (named in errors), or the config key
    weights: str  # tensor | channel | block
    activations: str  # static (per-tensor input_scale from the checkpoint) | dynamic (per token / per token group)
    block: Optional[tuple[int, int]] = None  # (block_n, block_k) for weights == "block"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    kv_cache: Optional[str] = None  # "fp8": FP8 KV cache (k/v scales from the checkpoint where it has them)
    weight_scale_names: tuple[str, ...] = ("weight_scale",)  # checkpoint tensor suffixes, first found wins
    input_scale_names: tuple[str, ...] = ("input_scale",)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def on_the_fly(self) -> bool:
        return self.source == "on-the-fly"

    def excludes(self, module: str) -> bool:
        return module_excluded(module, self.exclude)

    def describe(self) -> str:
        w = f"block {self.block[0]}x{self.block[1]}" if self.weights == "block" else f"per-{self.weights}"
        a = "static per-tensor" if self.activations == "static" else (
            f"dynamic per-token-group ({self.block[1]})" if self.weights == "block" else "dynamic per-token")
        kv = ", FP8 KV cache" if self.kv_cache else ""
        return f"FP8 ({self.source}): {w} weight scales, {a} activation scales{kv}"


def module_excluded(module: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether module name `module` matches one pattern: `re:<regex>` (re.match), or an fnmatch wildcard / plain
    name matched against the name and each dotted suffix of it (`lm_head` matches `language_model.lm_head`); a plain
    name also covers its submodules."""
    parts = module.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    for pat in patterns:
        if pat.startswith("re:"):
            if re.match(pat[3:], module):
                return True
            continue
        for s in suffixes:
            if fnmatchcase(s, pat) or s.startswith(pat + "."):
                return True
    return False


def _error(file: str, what: str, fix: str) -> ADError:
    return ADError(f"Quantization config `{file}`: {what}. {fix}")


# --- ModelOpt ------------------------------------------------------------------------------------------------------
def _modelopt(q: dict, file: str, key: str = "quantization") -> QuantScheme:
    algo = str(q.get("quant_algo") or "").upper()
    kv = q.get("kv_cache_quant_algo")
    if kv is None and isinstance(q.get("kv_cache_scheme"), dict):  # config.json form of newer ModelOpt
        kv = "FP8" if q["kv_cache_scheme"].get("type") == "float" and q["kv_cache_scheme"].get("num_bits") == 8 else (
            str(q["kv_cache_scheme"]))
    if kv is not None and str(kv).upper() != "FP8":
        raise _error(file, f"{key}.kv_cache_quant_algo `{kv}` is not supported (only FP8)",
                     "Use an FP8 KV-cache checkpoint, or remove the key to keep the KV cache in the model dtype.")
    excl = q.get("exclude_modules", q.get("ignore"))
    common = dict(source="modelopt", file=file, exclude=tuple(excl) if excl is not None else DEFAULT_EXCLUDE,
                  kv_cache="fp8" if kv else None)
    if algo == "FP8":
        return QuantScheme(weights="tensor", activations="static", **common)
    if algo == "FP8_PER_CHANNEL_PER_TOKEN":
        return QuantScheme(weights="channel", activations="dynamic", **common)
    raise _error(file, f"{key}.quant_algo `{q.get('quant_algo')}` is not supported", f"ad runs {SUPPORTED}; use such a "
                 "checkpoint, or the unquantized one with `quant_config.quant_algo=FP8` (FP8 at load).")


# --- Hugging Face quantization_config ------------------------------------------------------------------------------
def _hf_fp8(q: dict, file: str) -> QuantScheme:
    block = q.get("weight_block_size", [128, 128])  # transformers' FineGrainedFP8Config default
    act = str(q.get("activation_scheme", "dynamic")).lower()
    excl = q.get("modules_to_not_convert", q.get("ignored_layers"))
    common = dict(source="hf-fp8", file=file, exclude=tuple(excl) if excl is not None else DEFAULT_EXCLUDE,
                  weight_scale_names=("weight_scale_inv", "weight_scale"),
                  input_scale_names=("activation_scale", "input_scale"))
    if q.get("scale_fmt", "float") != "float":
        raise _error(file, f"scale_fmt `{q['scale_fmt']}` is not supported (only float32 scales)",
                     "Use a checkpoint with float32 weight_scale_inv tensors.")
    if act not in ("dynamic", "static"):
        raise _error(file, f"activation_scheme `{act}` is unknown", "Use `dynamic` or `static`.")
    if block is None:
        return QuantScheme(weights="tensor", activations=act, **common)
    if len(block) != 2 or min(block) < 1:
        raise _error(file, f"weight_block_size {block} is not two positive sizes", "Use e.g. [128, 128].")
    if act != "dynamic":
        raise _error(file, "block-wise FP8 with static activation scales is not supported",
                     "Block-scaled checkpoints are run with dynamic per-token-group activation scales.")
    return QuantScheme(weights="block", activations="dynamic", block=(int(block[0]), int(block[1])), **common)


def _fbgemm(q: dict, file: str) -> QuantScheme:
    excl = q.get("modules_to_not_convert")
    return QuantScheme(source="fbgemm_fp8", file=file, weights="channel", activations="dynamic",
                       exclude=tuple(excl) if excl is not None else DEFAULT_EXCLUDE,
                       notes=("activation_scale_ub is not applied (scales use the per-token amax)",)
                       if q.get("activation_scale_ub") is not None else ())


def _compressed(q: dict, file: str) -> QuantScheme:
    groups = list((q.get("config_groups") or {}).values())
    if len(groups) != 1:
        raise _error(file, f"compressed-tensors with {len(groups)} config groups is not supported",
                     "ad runs one FP8 scheme for every quantized linear layer.")
    w, a = groups[0].get("weights") or {}, groups[0].get("input_activations") or {}
    if w.get("type") != "float" or w.get("num_bits") != 8 or (a and (a.get("type") != "float" or
                                                                       a.get("num_bits") != 8)):
        raise _error(file, f"compressed-tensors weights {w.get('type')}{w.get('num_bits')} / activations "
                     f"{a.get('type')}{a.get('num_bits')} are not FP8", f"ad runs {SUPPORTED}.")
    strategy, act = w.get("strategy", "tensor"), "dynamic" if (not a or a.get("dynamic")) else "static"
    if act == "static" and a.get("strategy", "tensor") != "tensor":
        raise _error(file, f"static {a.get('strategy')} activation scales are not supported",
                     "Static activation scales must be per tensor.")
    kv = q.get("kv_cache_scheme")
    common = dict(source="compressed-tensors", file=file, exclude=tuple(q.get("ignore") or ()),
                  kv_cache="fp8" if isinstance(kv, dict) and kv.get("type") == "float" and kv.get("num_bits") == 8
                  else None)
    if strategy in ("tensor", "channel"):
        return QuantScheme(weights=strategy, activations=act, **common)
    if strategy == "block" and act == "dynamic":
        bn, bk = (w.get("block_structure") or [128, 128])[:2]
        return QuantScheme(weights="block", activations="dynamic", block=(int(bn), int(bk)), **common)
    raise _error(file, f"weight strategy `{strategy}` with {act} activations is not supported",
                 "Use tensor or channel weight scales (static or dynamic activations), or block scales with dynamic "
                 "activations.")


_HF_METHODS = {"fp8": _hf_fp8, "fbgemm_fp8": _fbgemm, "compressed-tensors": _compressed}


def scheme_from_hf(qc: Any, file: str) -> QuantScheme:
    """A `quantization_config` (dict or transformers config object) from config.json -> QuantScheme."""
    q = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
    method = str(q.get("quant_method", "")).lower()
    if method == "modelopt":
        return _modelopt(q.get("quantization", q), file, "quantization_config")
    if method not in _HF_METHODS:
        raise _error(file, f"quantization_config.quant_method `{q.get('quant_method')}` is not supported",
                     f"ad runs {SUPPORTED}. Use such a checkpoint, or an unquantized one (optionally with "
                     "`quant_config.quant_algo=FP8`).")
    return _HF_METHODS[method](q, file)


def scheme_from_modelopt_file(path: Path) -> QuantScheme:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ADError(f"Could not read the quantization config `{path}`: {e}. Fix or remove the file.") from None
    producer = (data.get("producer") or {}).get("name")
    if producer != "modelopt" or not isinstance(data.get("quantization"), dict):
        raise _error(str(path), f"producer `{producer}` with no `quantization` section is not a ModelOpt config",
                     "A ModelOpt export has `producer.name: modelopt` and a `quantization` section.")
    return _modelopt(dict(data["quantization"]), str(path))


# --- the user's switch ---------------------------------------------------------------------------------------------
def apply_user(scheme: Optional[QuantScheme], user: Any) -> Optional[QuantScheme]:
    """Merge the config's `quant_config` section: quant_algo FP8 adds on-the-fly quantization when the checkpoint has
    none; exclude_modules replaces the list; kv_cache_quant_algo FP8 turns on the FP8 KV cache."""
    if user is None:
        return scheme
    algo = (user.quant_algo or "").upper() or None
    if algo not in (None, "FP8"):
        raise ADError(f"`quant_config.quant_algo: {user.quant_algo}` is not supported; use FP8 (or leave it unset to "
                      "run the checkpoint as it is).")
    kv = (user.kv_cache_quant_algo or "").upper() or None
    if kv not in (None, "FP8"):
        raise ADError(f"`quant_config.kv_cache_quant_algo: {user.kv_cache_quant_algo}` is not supported; use FP8.")
    if user.weight_granularity not in ("channel", "tensor"):
        raise ADError(f"`quant_config.weight_granularity: {user.weight_granularity}` is not one of channel, tensor.")
    if scheme is None and algo == "FP8":
        scheme = QuantScheme(source="on-the-fly", file="quant_config", weights=user.weight_granularity,
                             activations="dynamic")
    if scheme is None:
        return None
    if user.exclude_modules is not None:
        scheme = replace(scheme, exclude=tuple(user.exclude_modules))
    if kv == "FP8":
        scheme = replace(scheme, kv_cache="fp8")
    return scheme


def read_scheme(folder: Optional[Path], hf_config: Any, stored: Optional[dict], user: Any) -> Optional[QuantScheme]:
    """The model's QuantScheme: a local folder's hf_quant_config.json, else config.json's quantization_config, else
    the registry's stored copy of those (`stored`: {"file": ..., "content": ...}), then the user's section."""
    scheme = None
    qc = getattr(hf_config, "quantization_config", None)
    if folder is not None and (folder / "hf_quant_config.json").is_file():
        scheme = scheme_from_modelopt_file(folder / "hf_quant_config.json")
    elif qc:
        scheme = scheme_from_hf(qc, str(folder / "config.json") if folder is not None else "config.json")
    elif stored:
        label = f"model_registry/quant_configs.yaml ({stored['file']})"
        content = stored["content"]
        if stored["file"] == "hf_quant_config.json":
            scheme = _modelopt(dict(content["quantization"]), label)
        else:
            scheme = scheme_from_hf(content, label)
    return apply_user(scheme, user)
