"""Which transformers classes hold the stateful token mixers the export patches rewrite (the one version shim).

Checked against transformers 5.17 (the GPU machine) and 5.24: every class below exists in both, with the same
submodules and attributes the patches read. What differs between the two is kept out of the patches' way:
  - the cache keyword (`cache_params` in 5.17, `cache` in 5.24): the patched forwards take **kwargs and use no cache
    (export runs with use_cache=False; the cached transforms add our own state slots later);
  - the gated RMSNorm of Bamba / Mamba2 (one group in 5.17, `n_groups` groups in 5.24): the patched forwards call
    the module's own `norm`, so the graph holds whatever the installed version computes, exactly as HF eager.
A class the installed transformers lacks simply never matches.
"""

from __future__ import annotations

from typing import Iterator

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
