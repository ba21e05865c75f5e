"""The Python API: build a model through the same config resolution as the CLI and generate with it.

    from autodeploy_cli import LLM, SamplingParams

    llm = LLM("ad-tiny-llama", max_seq_len=256, attn_backend="torch")   # any config key as a keyword
    for c in llm.generate(["Hello, my name is"], SamplingParams(max_tokens=8)):
        print(c.text)

`build_engine(cfg)` is the one place that joins the compiler (pipeline) and the runtime: the runtime is handed a
built model and never imports the pipeline.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError

# the anchor's LLM(...) keyword names -> ours (dotted config keys)
ANCHOR_KWARGS = {
    "tensor_parallel_size": "world_size",
    "tokens_per_block": "attn_page_size",
    "free_mem_ratio": "kv_cache_config.free_gpu_memory_fraction",
    "kv_cache_dtype": "kv_cache_config.dtype",
}


def _generation_eos(source: str) -> Any:
    """eos_token_id of the model's generation_config.json (what HF generate stops on), if it has one.

    Local folder or HF cache only: building an engine must not wait on the network (offline, huggingface_hub retries
    for minutes). Loading a hub model's weights caches its generation config; random-weight builds of a hub id use
    config.json's eos."""
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(source, local_files_only=True).eos_token_id
    except Exception:  # noqa: BLE001 - no generation config (or offline): config.json's eos is used alone
        return None


# below this many parameters a CPU decode step is microseconds of work per op: waking more intra-op threads costs
# more than it saves (measured: 640 -> 10 tok/s for the tiny model with 2 threads and a busy second core)
SMALL_MODEL_PARAMS = 50_000_000


def pick_cpu_threads(num_params: int) -> int:
    """Intra-op threads for CPU inference: OMP_NUM_THREADS if the user set it, 1 for small models, else torch's."""
    import os

    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if num_params < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def build_engine(cfg: ADConfig, tokenizer: Any = None) -> Any:
    """Run the pipeline for `cfg` and hand the built model to the runtime's Engine (with `tokenizer` if one was
    loaded already; else it is loaded on first use)."""
    from autodeploy_cli.pipeline.build import build
    from autodeploy_cli.runtime.engine import Engine

    result = build(cfg)
    if result.ctx.device.type == "cpu":
        result.ctx.facts.cpu_threads = pick_cpu_threads(result.ctx.facts.num_params)
    iface = result.ctx.cache
    if iface is None:
        raise ADError("The pipeline inserted no KV cache (no attention was found, or "
                      "`transforms.insert_cached_attention` is disabled); the runtime needs one.")
    factory = result.ctx.factory
    hf_config = factory.hf_config()
    text_cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
    eos_ids: list[int] = []
    for eos in (getattr(text_cfg, "eos_token_id", None), _generation_eos(factory.source)):
        eos_ids += eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
    model = result.model
    if result.ctx.world_size > 1:  # rank 0 drives: every forward goes to the other ranks first
        from autodeploy_cli.distributed.broadcast import LeaderModel

        model = LeaderModel(model, iface)
    return Engine(model, iface, cfg, tokenizer=tokenizer, build_result=result, eos_token_ids=eos_ids,
                  vocab_size=getattr(text_cfg, "vocab_size", None), tokenizer_loader=factory.tokenizer)


def _follower_build(request: dict) -> tuple[Any, Any]:
    from autodeploy_cli.pipeline.build import build

    result = build(request["config"], verify=request["verify"], stop_after=request["stop_after"])
    return result.model, result.ctx.cache


def follow() -> None:
    """What every rank but 0 runs: build what rank 0 builds, run every forward it runs, until it stops."""
    from autodeploy_cli.distributed.broadcast import serve

    serve(_follower_build)


def _start_ranks(cfg: ADConfig) -> Any:
    """The ranks of a `world_size > 1` model built in this process: this process is rank 0 and drives the others.
    Under torchrun every process calls LLM(...): ranks other than 0 follow rank 0 and exit when it shuts down."""
    import atexit
    import sys

    from autodeploy_cli.distributed import launch

    session = launch.start(cfg, follow)
    if session.rank != 0:
        try:
            follow()
        except BaseException as e:
            session.close(e)
            raise
        session.close()
        sys.exit(0)
    if session.mode != "single":
        atexit.register(session.close)
    return session


def config_from_kwargs(model: Optional[str], config_files: Sequence[str] = (), **kwargs: Any) -> ADConfig:
    """Resolve a config the way the CLI does: default.yaml < registry layers < `config_files` < keyword overrides
    (nested dicts or dotted keys; the anchor's LLM keyword names are accepted where they map)."""
    from autodeploy_cli.config.layers import deep_merge, set_path
    from autodeploy_cli.config.loader import resolve

    overrides: dict = {}
    for key, value in kwargs.items():
        dotted = ANCHOR_KWARGS.get(key, key)
        layer: dict = {}
        set_path(layer, dotted, value)
        overrides = deep_merge(overrides, layer)
    return resolve(list(config_files), overrides, model=model)


class LLM:
    """A built model with a generate() method, configured like `ad run` (same keys, same precedence)."""

    def __init__(self, model: Optional[str] = None, *, config_files: Sequence[str] = (), **kwargs: Any):
        self.config = config_from_kwargs(model, config_files, **kwargs)
        self._session = _start_ranks(self.config)
        try:
            self.engine = build_engine(self.config)
        except BaseException as e:
            self._session.close(e)
            raise

    def shutdown(self) -> None:
        """End the other ranks of a `world_size > 1` model (also done at exit); the model cannot run after."""
        self._session.close()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: Union[str, Sequence[int], Sequence[Union[str, Sequence[int]]]],
                 sampling_params: Any = None, chat_template: Optional[bool] = None) -> list[Any]:
        """Completions for `prompts`: a text, a list of texts, a list of token ids, or a list of token-id lists."""
        if isinstance(prompts, str) or (prompts and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]  # type: ignore[list-item]
        return self.engine.generate(list(prompts), sampling_params, chat_template=chat_template)


def quality_probe(engine: Any, cfg: ADConfig) -> Any:
    """Logits of a built engine on the quality gate's probe prompts (CPU float32), for `ad bench --baseline hf`."""
    from autodeploy_cli.pipeline.quality_gate import probe_batch

    vocab = getattr(engine, "vocab_size", None) or engine.build_result.ctx.factory.hf_config().vocab_size
    ids, pos = probe_batch(vocab, cfg.seed, engine.iface.device)
    return engine.iface.run_prefill(engine.model, ids, pos).float().cpu()


def quality_against(model: Any, ours: Any, cfg: ADConfig) -> dict:
    """The quality gate's numbers for logits `ours` (quality_probe) against HF `model` on the same prompts."""
    import torch

    from autodeploy_cli.pipeline.quality_gate import compare, probe_batch

    ids, pos = probe_batch(ours.shape[-1], cfg.seed, model.device)
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float().cpu()
    return {**compare(ours, ref), "vs": "the --baseline hf model (transformers, unquantized)"}
