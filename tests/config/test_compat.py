"""TensorRT-LLM AutoDeploy config files (flat and nested shapes) resolve to ad's schema, with exact warnings.

Fixtures: tests/fixtures/anchor/*.yaml (the issue's two examples, its override file, a nested file with
args.yaml_extra, and a manual tp_plan). Some expectations depend on which backends ad's transforms offer today
(other issues add backends): those read the registered options' `choices`, never a hard-coded list.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autodeploy_cli.config.loader import resolve_with_report
from autodeploy_cli.errors import ADError
from autodeploy_cli.pipeline import registry

ANCHOR = Path(__file__).resolve().parent.parent / "fixtures" / "anchor"
FLAT, BASE, OVERRIDE = ANCHOR / "flat_serve.yaml", ANCHOR / "nested_base.yaml", ANCHOR / "nested_override.yaml"
WITH_EXTRA, TP_PLAN = ANCHOR / "nested_with_extra.yaml", ANCHOR / "tp_plan.yaml"
EXTRA_WARNINGS = [
    "`allreduce_strategy: ONESHOT` is ignored: ad's multi-GPU all-reduce is torch.distributed with NCCL.",
    "`kv_cache_config.enable_block_reuse: true` is ignored: ad's KV page manager gives every sequence its own pages "
    "and never reuses blocks across requests.",
    "`prompt.sp_kwargs.repetition_penalty: 1.1` is ignored: ad's sampler supports max_tokens, temperature, top_k, "
    "top_p, seed, stop, stop_token_ids and ignore_eos.",
]


# ad's backends today (hard-coded on purpose: a change to what ad offers must show up here)
ATTENTION_BACKENDS = "auto, torch, triton, flashinfer"


_last: dict = {}


def resolve(*args, **kwargs):
    """resolve_with_report, keeping the report for warnings() and notes()."""
    cfg, _last["report"] = resolve_with_report(*args, **kwargs)
    return cfg


def warnings() -> list[str]:
    return _last["report"].warnings


def notes() -> list[str]:
    return _last["report"].notes


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the example files ---------------------------------------------------------------------------------------
def test_flat_file_maps_keys_and_warns_once_per_trtllm_key():
    cfg = resolve([FLAT])
    assert (cfg.max_batch_size, cfg.max_seq_len, cfg.model_factory) == (256, 65536, "AutoModelForCausalLM")
    assert (cfg.kv_cache_config.dtype, cfg.kv_cache_config.free_gpu_memory_fraction) == ("fp8", 0.9)
    assert cfg.transforms["resize_kv_cache"]["free_gpu_memory_fraction"] == 0.9  # the shortcut reaches its transform
    assert cfg.runtime == "demollm"
    assert cfg.compile_backend == cfg.transforms["compile_model"]["backend"] == "torch-cudagraph"
    assert cfg.attn_backend == cfg.transforms["insert_cached_attention"]["backend"] == "flashinfer"
    assert warnings() == [
        "`runtime: trtllm` is ignored: it selects TensorRT-LLM's runtime; ad always runs its built-in runtime "
        "(`runtime: demollm`).",
    ]


def test_nested_file_resolves_its_args_prompt_and_transforms():
    cfg = resolve([BASE])
    assert cfg.model_kwargs == {"num_hidden_layers": 12, "hidden_size": 1024}
    assert (cfg.world_size, cfg.max_seq_len, cfg.max_batch_size) == (4, 2048, 16)
    assert cfg.transforms["compile_model"]["backend"] == cfg.compile_backend == "torch-compile"
    assert cfg.transforms["detect_sharding"]["support_partial_config"] is True  # ad's own sharding option
    assert cfg.transforms["insert_cached_attention"]["backend"] == "triton"
    assert (cfg.prompt.batch_size, cfg.prompt.sp_kwargs.max_tokens) == (8, 150)
    assert (cfg.prompt.sp_kwargs.temperature, cfg.prompt.sp_kwargs.top_k) == (0.8, 50)
    assert warnings() == []


def test_override_file_wins_where_it_sets_a_value():
    cfg = resolve([BASE, OVERRIDE])
    assert (cfg.world_size, cfg.max_batch_size) == (8, 32)  # from the override file
    assert cfg.max_seq_len == 2048 and cfg.model_kwargs["hidden_size"] == 1024  # only in the base file
    assert cfg.prompt.batch_size == 8
    assert cfg.transforms["compile_model"]["backend"] == cfg.compile_backend == "torch-opt"
    assert warnings() == []


def test_dotted_overrides_in_both_styles():
    cfg = resolve([BASE, OVERRIDE], [
        "--args.model-kwargs.num-hidden-layers=10", "--prompt.batch-size=4", "--benchmark.isl=1024",
        "args.max_seq_len=1024", "--benchmark.num", "3", "benchmark.bs=2", "prompt.sp_kwargs.max_tokens=7",
    ])
    assert cfg.model_kwargs == {"num_hidden_layers": 10, "hidden_size": 1024}
    assert (cfg.prompt.batch_size, cfg.prompt.sp_kwargs.max_tokens, cfg.max_seq_len) == (4, 7, 1024)
    assert (cfg.benchmark.isl, cfg.benchmark.num_requests, cfg.benchmark.concurrency) == (1024, 3, 2)
    assert "`benchmark.num` (AutoDeploy) -> `benchmark.num_requests`." in notes()


def test_typo_inside_args_still_names_the_key():
    with pytest.raises(ADError, match=r"Unknown config key `max_seq_lenn`. Did you mean `max_seq_len`\?"):
        resolve([BASE], ["--args.max-seq-lenn=3"])


# --- yaml_extra and TensorRT-LLM runtime keys --------------------------------------------------------------------
def test_yaml_extra_files_sit_below_the_file_naming_them(tmp_path, monkeypatch):
    # copy the fixtures elsewhere and run from a third directory: paths resolve relative to the naming file
    root = tmp_path / "cfgs"
    shutil.copytree(ANCHOR, root)
    monkeypatch.chdir(tmp_path)
    cfg = resolve([root / "nested_with_extra.yaml"])
    assert cfg.model_kwargs == {"num_hidden_layers": 5}  # from extra/num_hidden_layers_5.yaml
    assert cfg.world_size == 1  # the outer args beat extra/world_size_2.yaml (tensor_parallel_size: 2)
    assert cfg.max_seq_len == 256  # the outer args beat extra/trtllm_runtime.yaml (4096)
    assert cfg.enable_chunked_prefill is True  # only in extra/trtllm_runtime.yaml
    assert (cfg.kv_cache_config.free_gpu_memory_fraction, cfg.kv_cache_config.dtype) == (0.8, "fp8")
    assert cfg.cuda_graph_batch_sizes == cfg.transforms["compile_model"]["cuda_graph_batch_sizes"] == [1, 2, 4]
    assert cfg.attn_page_size == 32
    assert "multi_stream_moe" not in cfg.transforms
    assert warnings() == EXTRA_WARNINGS
    assert notes() == [
        "`tensor_parallel_size` (AutoDeploy) -> `world_size`.",
        "`free_mem_ratio` (AutoDeploy) -> `kv_cache_config.free_gpu_memory_fraction`.",
        "`kv_cache_dtype` (AutoDeploy) -> `kv_cache_config.dtype`.",
        "`disable_overlap_scheduler: false` dropped: ad's runtime always overlaps greedy steps with the host (the "
        "next step is launched before the previous one's tokens are read); there is no switch to turn it off.",
        "`cuda_graph_config.batch_sizes` (AutoDeploy) -> `cuda_graph_batch_sizes`.",
        "`cuda_graph_config.enable_padding: true` dropped: ad pads a decode batch to the next captured batch size.",
        "`kv_cache_config.tokens_per_block` (AutoDeploy) -> `attn_page_size`.",
        "`benchmark.num` (AutoDeploy) -> `benchmark.num_requests`.",
        "`benchmark.bs` (AutoDeploy) -> `benchmark.concurrency`.",
        "`benchmark.enabled: true`: `ad bench` runs the benchmark (`ad run` never does).",
        "`benchmark.results_path`/`benchmark.store_results` -> `benchmark.output: bench/results.json`.",
        "`transforms.multi_stream_moe` (AutoDeploy) is disabled and ad does not implement it; dropped.",
    ]
    # the inner file alone keeps its own values: the outer file is what beat them
    inner = resolve([root / "extra" / "trtllm_runtime.yaml"])
    assert inner.max_seq_len == 4096


def test_yaml_extra_on_the_command_line_sits_below_the_other_overrides(monkeypatch):
    monkeypatch.chdir(ANCHOR)  # command-line paths are relative to the working directory
    cfg = resolve([], ["--args.yaml-extra=[extra/num_hidden_layers_5.yaml, extra/world_size_2.yaml]",
                       "--args.world-size=3"])
    assert (cfg.model_kwargs, cfg.world_size) == ({"num_hidden_layers": 5}, 3)


def test_nested_prompt_and_benchmark_sections():
    cfg = resolve([WITH_EXTRA])
    assert cfg.prompt.batch_size == 3
    assert cfg.prompt.queries == ["What is the capital of France?"]  # one string becomes a list
    assert (cfg.prompt.sp_kwargs.max_tokens, cfg.prompt.sp_kwargs.top_k) == (20, 1)
    b = cfg.benchmark
    assert (b.isl, b.osl, b.num_requests, b.concurrency, b.output) == (128, 64, 16, 4, "bench/results.json")
    assert (cfg.max_seq_len, cfg.max_batch_size) == (256, 8)  # the benchmark fits: nothing raised


def test_enabled_benchmark_raises_limits_like_autodeploy(tmp_path):
    f = write(tmp_path, "a.yaml", {"args": {"max_seq_len": 512, "max_batch_size": 4},
                                   "benchmark": {"enabled": True, "isl": 2048, "osl": 128, "bs": 8}})
    cfg = resolve([f])
    assert (cfg.max_seq_len, cfg.max_batch_size, cfg.benchmark.concurrency) == (2176, 8, 8)
    assert notes()[-1] == ("`benchmark.enabled: true`: `ad bench` runs the benchmark (`ad run` never does); as in "
                           "AutoDeploy, raised max_seq_len to 2176 and max_batch_size to 8 to fit it.")
    cfg = resolve([f], ["benchmark.enabled=false"])
    assert (cfg.max_seq_len, cfg.max_batch_size) == (512, 4)
    assert warnings() == ["`benchmark.enabled: false` is ignored: `ad bench` always runs the benchmark and `ad run` "
                          "never does."]


def test_each_ignored_key_warns_once_across_files(tmp_path):
    data = {"runtime": "trtllm", "pipeline_parallel_size": 1, "moe_expert_parallel_size": 2, "max_beam_width": 4,
            "cuda_graph_config": None, "enable_iter_perf_stats": True, "kv_cache_config": {"max_tokens": 4096},
            "benchmark": {"results_path": "r.json", "store_results": False}}
    f1, f2 = write(tmp_path, "a.yaml", data), write(tmp_path, "b.yaml", {"args": data})
    cfg = resolve([f1, f2])
    assert cfg.runtime == "demollm" and cfg.benchmark.output is None
    assert warnings() == [
        "`moe_expert_parallel_size: 2` is ignored: ad parallelizes only through `world_size` (tensor parallel on "
        "one host).",
        "`max_beam_width: 4` is ignored: ad decodes a single beam per request.",
        "`enable_iter_perf_stats: true` is ignored: it is a TensorRT-LLM runtime option with no equivalent in ad's "
        "built-in runtime.",
        "`runtime: trtllm` is ignored: it selects TensorRT-LLM's runtime; ad always runs its built-in runtime "
        "(`runtime: demollm`).",
        "`cuda_graph_config: null` is ignored: in ad, CUDA graphs come from `compile_backend` (torch-cudagraph or "
        "torch-opt); choose torch-simple or torch-compile to run without them.",
        "`kv_cache_config.max_tokens: 4096` is ignored: ad sizes the KV cache from "
        "`kv_cache_config.free_gpu_memory_fraction` on GPU and to max_batch_size x max_seq_len tokens on CPU.",
        "`benchmark.results_path` is ignored because `benchmark.store_results` is false: ad prints the results and "
        "writes no file.",
    ]
    assert "`pipeline_parallel_size: 1` dropped: ad parallelizes only through `world_size` (tensor parallel on " \
           "one host)." in notes()


def test_renamed_key_and_its_target_disagreeing_in_one_file_is_an_error(tmp_path):
    f = write(tmp_path, "a.yaml", {"tensor_parallel_size": 2, "world_size": 4})
    with pytest.raises(ADError, match=r"a.yaml sets both `tensor_parallel_size: 2` \(AutoDeploy's name\) and "
                                      r"`world_size: 4`; keep one of them."):
        resolve([f])
    f = write(tmp_path, "b.yaml", {"tensor_parallel_size": 2, "world_size": 2})
    assert resolve([f]).world_size == 2


def test_v1_backend_names_and_trtllm_attention(tmp_path):
    cfg = resolve([], ["attn_backend=FlashInfer"])
    assert "`attn_backend: FlashInfer` (AutoDeploy v1 name) -> `flashinfer`." in notes()
    assert cfg.attn_backend == "flashinfer"
    cfg = resolve([], ["attn_backend=trtllm"])
    assert cfg.attn_backend == "auto"  # ad keeps its own backend
    assert warnings() == [
        f"`attn_backend: trtllm` is ignored: ad's `insert_cached_attention` has no such backend (choices: "
        f"{ATTENTION_BACKENDS}); ad keeps `transforms.insert_cached_attention.backend` from its defaults or lower "
        "config layers (default `auto`)."]


def test_autodeploy_only_options_of_our_transforms_are_dropped():
    cfg = resolve([], ["transforms.compile_model.piecewise_enabled=true", "transforms.load_weights.run_per_gm=false",
                       "transforms.resize_kv_cache.free_mem_ratio=0.5"])
    assert "piecewise_enabled" not in cfg.transforms["compile_model"]
    assert cfg.transforms["resize_kv_cache"]["free_gpu_memory_fraction"] == 0.5
    assert cfg.kv_cache_config.free_gpu_memory_fraction == 0.5  # the shortcut mirrors its transform
    assert warnings() == [
        "`transforms.compile_model.piecewise_enabled: true` is ignored: ad's `compile_model` has no such option.",
        "`transforms.load_weights.run_per_gm: false` is ignored: ad's `load_weights` has no such option.",
    ]
    assert "`transforms.resize_kv_cache.free_mem_ratio` (AutoDeploy) -> `free_gpu_memory_fraction`." in notes()


# --- transforms ad does not implement --------------------------------------------------------------------------------
def test_unimplemented_transform_enabled_is_an_error_listing_ours():
    assert "multi_stream_moe" not in registry.registered_names()
    with pytest.raises(ADError) as e:
        resolve([], ["transforms.multi_stream_moe.enabled=true"])
    assert str(e.value).startswith(
        "Transform `multi_stream_moe` is a TensorRT-LLM AutoDeploy transform that ad does not implement, and your "
        "config enables it. Disable it with `transforms.multi_stream_moe.enabled: false` or remove it. "
        "ad's transforms: build_model, cleanup_input_constraints, cleanup_noop_add, cleanup_noop_slice, "
        "compile_model, ")


def test_unimplemented_transform_disabled_by_a_later_layer_is_accepted(tmp_path):
    f = write(tmp_path, "a.yaml", {"args": {"transforms": {"fuse_nvfp4_moe": {"backend": "cutlass"}}}})
    cfg = resolve([f], ["transforms.fuse_nvfp4_moe.enabled=false"])
    assert "fuse_nvfp4_moe" not in cfg.transforms and warnings() == []
    assert notes() == ["`transforms.fuse_nvfp4_moe` (AutoDeploy) is disabled and ad does not implement it; dropped."]


def test_manual_tp_plan_reaches_the_sharding_transform():
    cfg = resolve([TP_PLAN])
    assert cfg.world_size == 2
    opts = registry.build_options("detect_sharding", cfg.transforms["detect_sharding"])
    assert opts.support_partial_config is False and opts.manual_config["head_dim"] == 128
    assert opts.manual_config["tp_plan"] == {
        "in_proj": "mamba", "out_proj": "rowwise", "q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise",
        "o_proj": "rowwise", "down_proj": "rowwise", "fc1_latent_proj": "gather"}
    assert cfg.transforms["sharding_transform_executor"]["enabled"] is False  # as the file says: plan not applied
    assert warnings() == [] and notes() == []


def test_anchor_only_sharding_options_are_dropped_with_one_warning(tmp_path):
    f = write(tmp_path, "a.yaml", {"world_size": 2, "transforms": {"detect_sharding": {
        "allreduce_strategy": "SYMM_MEM", "process_grid": {"ep": 2, "tp": 1}, "sharding_dims": ["ep", "bmm"]}}})
    cfg = resolve([f])
    opts = registry.build_options("detect_sharding", cfg.transforms["detect_sharding"])
    assert (opts.allreduce_strategy, opts.sharding_dims) == ("SYMM_MEM", ["ep", "bmm"])
    assert warnings() == ["`transforms.detect_sharding.process_grid: {\"ep\": 2, \"tp\": 1}` is ignored: ad's "
                          "`detect_sharding` has no such option."]


def test_sharding_ir_transforms_are_dropped_with_a_warning(tmp_path):
    f = write(tmp_path, "a.yaml", {"transforms": {"apply_sharding_hints": {"stage": "sharding"}}})
    cfg = resolve([f])
    assert "apply_sharding_hints" not in cfg.transforms
    assert warnings() == ["`transforms.apply_sharding_hints` is ignored: it belongs to AutoDeploy's sharding-IR path; "
                          "ad shards with `detect_sharding` + `sharding_transform_executor` (on by default when "
                          "`world_size` > 1)."]


def test_manual_tp_plan_with_a_bad_style_names_it():
    with pytest.raises(ADError, match=r"Invalid sharding style `colwize` for `q_proj` in "
                                      r"`transforms.detect_sharding.manual_config.tp_plan`: choose one of colwise, "
                                      r".*Did you mean `colwise`\?"):
        resolve([TP_PLAN], ["transforms.detect_sharding.manual_config.tp_plan.q_proj=colwize"])


def test_missing_yaml_extra_file_names_where_it_looked(tmp_path):
    f = write(tmp_path, "a.yaml", {"args": {"yaml_extra": ["nope.yaml"]}})
    with pytest.raises(ADError, match=r"`args.yaml_extra` in .*a.yaml names `nope.yaml`, which does not exist"):
        resolve([f])
    loop = write(tmp_path, "loop.yaml", {"yaml_extra": ["loop.yaml"]})
    with pytest.raises(ADError, match="Config files include each other in a loop"):
        resolve([loop])


# --- the ad command ----------------------------------------------------------------------------------------------
def invoke(*args: str):
    from autodeploy_cli.cli import app

    return CliRunner().invoke(app, list(args))


def print_config(*args: str) -> dict:
    result = invoke(*args, "--print-config")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_print_config_shows_the_resolved_nested_files():
    out = print_config("build", "--config", str(BASE), "--config", str(OVERRIDE),
                       "--args.model-kwargs.num-hidden-layers=10")
    assert out["model_kwargs"] == {"num_hidden_layers": 10, "hidden_size": 1024}
    assert (out["world_size"], out["max_batch_size"], out["max_seq_len"]) == (8, 32, 2048)
    assert "args" not in out and out["transforms"]["detect_sharding"]["support_partial_config"] is True


def test_run_uses_the_prompt_section_and_bench_the_benchmark_section():
    out = print_config("run", "--config", str(WITH_EXTRA), "--prompt.batch-size=4")
    assert out["prompt"]["batch_size"] == 4 and out["prompt"]["queries"] == ["What is the capital of France?"]
    assert out["prompt"]["sp_kwargs"]["max_tokens"] == 20
    out = print_config("bench", "--config", str(WITH_EXTRA), "--benchmark.isl=1024")
    assert {k: out["benchmark"][k] for k in ("isl", "osl", "num_requests", "concurrency", "output")} == {
        "isl": 1024, "osl": 64, "num_requests": 16, "concurrency": 4, "output": "bench/results.json"}
    assert out["max_seq_len"] == 1088  # benchmark.enabled: raised to isl + osl, as AutoDeploy does


def test_cli_error_for_an_enabled_unimplemented_transform(tmp_path):
    f = write(tmp_path, "a.yaml", {"args": {"transforms": {"multi_stream_moe": {"enabled": True}}}})
    result = invoke("build", "--config", str(f), "--print-config")
    assert result.exit_code == 2
    assert "ad: error: Transform `multi_stream_moe` is a TensorRT-LLM AutoDeploy transform" in result.output
