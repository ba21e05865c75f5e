"""Which transformers classes hold the stateful token mixers the export patches rewrite (the one version shim).

Checked against transformers 5.17 (the GPU machine) and 5.24: every class below exists in both, with the same
submodules and attributes the patches read. What differs between the two is kept out of the patches' way:
  - the cache keyword (`cache_params` in 5.17, `cache` in 5.24): the patched forwards take **kwargs and use no cache
    (export runs with use_cache=False; the cached transforms add our own state slots later);
  - the gated RMSNorm of Bamba / Mamba2 / Granite (one group in 5.17, `n_groups` groups in 5.24; Nemotron-H has
    groups in both): `gated_norm_args` reads the module's own `group_size` (absent = one group), so the canonical
    op computes what the installed version computes; an unknown norm class is called as it is.
A class the installed transformers lacks simply never matches.
"""

from __future__ import annotations

from typing import Iterator, Optional

from torch import nn

# kind -> (module, class name) of every HF mixer of that kind
MIXER_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "mamba2": (
        ("transformers.models.mamba2.modeling_mamba2", "Mamba2Mixer"),
        ("transformers.models.nemotron_h.modeling_nemotron_h", "NemotronHMamba2Mixer"),
        ("transformers.models.bamba.modeling_bamba", "BambaMixer"),
        ("transformers.models.granitemoehybrid.modeling_granitemoehybrid", "GraniteMoeHybridMambaLayer"),
    ),
    "gated_deltanet": (
        ("transformers.models.qwen3_next.modeling_qwen3_next", "Qwen3NextGatedDeltaNet"),
    ),
}


def find_mixers(model: nn.Module, kind: str) -> Iterator[nn.Module]:
    """The submodules of `model` that are HF mixers of `kind` (matched by module and class name: nothing imported)."""
    wanted = set(MIXER_CLASSES[kind])
    for module in model.modules():
        cls = type(module)
        if (cls.__module__, cls.__name__) in wanted:
            yield module


# gated RMSNorm class -> norm_before_gate (Mamba2 mixers gate first, Qwen3-Next normalises first)
GATED_NORMS = {"NemotronHRMSNormGated": False, "Zamba2RMSNormGated": False, "BambaRMSNormGated": False,
               "MambaRMSNormGated": False, "GraniteMoeHybridRMSNormGated": False, "Qwen3NextRMSNormGated": True}


def gated_norm_args(norm: nn.Module) -> Optional[tuple[float, int, bool]]:
    """(eps, group_size, norm_before_gate) of auto_deploy::torch_rmsnorm_gated for a known HF gated norm, else None."""
    before = GATED_NORMS.get(type(norm).__name__)
    if before is None or not hasattr(norm, "variance_epsilon") or not hasattr(norm, "weight"):
        return None
    group = int(getattr(norm, "group_size", None) or norm.weight.shape[-1])
    return float(norm.variance_epsilon), group, before
