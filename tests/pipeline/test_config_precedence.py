"""Config layering: default.yaml < registry layers < --config files (in order) < overrides; shortcuts; errors."""

from __future__ import annotations

import pytest
import yaml

from autodeploy_cli.config.layers import deep_merge, parse_overrides
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_deep_merge_replaces_lists_and_merges_dicts():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": [1]}
    merged = deep_merge(base, {"a": {"y": [3]}, "b": [9, 9]})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": [9, 9]}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": [1]}  # inputs untouched


def test_later_files_win_and_dicts_merge(tmp_path):
    f1 = write(tmp_path, "one.yaml", {"max_seq_len": 1024, "model_kwargs": {"num_hidden_layers": 3, "hidden_size": 64},
                                      "cuda_graph_batch_sizes": [1, 2, 4]})
    f2 = write(tmp_path, "two.yaml", {"max_seq_len": 2048, "model_kwargs": {"num_hidden_layers": 1},
                                      "cuda_graph_batch_sizes": [8]})
    cfg = resolve([f1, f2])
    assert cfg.max_seq_len == 2048
    assert cfg.model_kwargs == {"num_hidden_layers": 1, "hidden_size": 64}
    assert cfg.cuda_graph_batch_sizes == [8]  # lists are replaced, not concatenated


def test_overrides_beat_files_in_both_styles(tmp_path):
    f1 = write(tmp_path, "one.yaml", {"max_seq_len": 1024, "max_batch_size": 4})
    cfg = resolve([f1], ["max_seq_len=333", "--max-batch-size=7", "--model-kwargs.num-hidden-layers", "1"])
    assert (cfg.max_seq_len, cfg.max_batch_size, cfg.model_kwargs) == (333, 7, {"num_hidden_layers": 1})


def test_registry_layer_sits_between_default_and_user_files(tmp_path):
    assert resolve().skip_loading_weights is True  # from the default model's registry layer
    f1 = write(tmp_path, "one.yaml", {"skip_loading_weights": False})
    assert resolve([f1]).skip_loading_weights is False


def test_shortcut_reaches_its_transform_and_mirrors_it(tmp_path):
    cfg = resolve([], ["compile_backend=torch-compile", "cuda_graph_batch_sizes=[1,2]"])
    assert cfg.transforms["compile_model"]["backend"] == "torch-compile"
    assert cfg.transforms["compile_model"]["cuda_graph_batch_sizes"] == [1, 2]
    # not set explicitly: the shortcut shows the transform's value
    cfg = resolve([], ["transforms.compile_model.backend=torch-compile"])
    assert cfg.compile_backend == "torch-compile"
    assert resolve().compile_backend == "auto"


def test_dollar_brace_in_prompts_is_literal():
    cfg = resolve([], ["prompt.queries=['cost is ${price} today']"])
    assert cfg.prompt.queries == ["cost is ${price} today"]


def test_parse_overrides_values_are_yaml_typed():
    assert parse_overrides(["a.b=3", "c=true", "d=[1, 2]", "e=hello", "--f-g.h-i=0.5"]) == {
        "a": {"b": 3}, "c": True, "d": [1, 2], "e": "hello", "f_g": {"h_i": 0.5}}


def test_unknown_key_names_path_and_closest(tmp_path):
    with pytest.raises(ADError) as e:
        resolve([], ["max_seq_lenn=4"])
    assert "Unknown config key `max_seq_lenn`" in str(e.value) and "Did you mean `max_seq_len`?" in str(e.value)
    with pytest.raises(ADError) as e:
        resolve([], ["kv_cache_config.dtpye=fp8"])
    assert "`kv_cache_config.dtpye`" in str(e.value) and "`dtype`" in str(e.value)


def test_wrong_type_names_key():
    with pytest.raises(ADError, match=r"Wrong type for config key `max_batch_size`"):
        resolve([], ["max_batch_size=lots"])


def test_invalid_choice_lists_valid_ones():
    with pytest.raises(ADError) as e:
        resolve([], ["dtype=bf16"])
    assert "Invalid value `bf16` for `dtype`: choose one of auto, float32, float16, bfloat16." in str(e.value)
    with pytest.raises(ADError, match="Invalid value `torch-magic` for `compile_backend`: choose one of auto, "
                                      "torch-simple"):  # the shortcut the user typed, not its transform option
        resolve([], ["compile_backend=torch-magic"])


def test_unknown_transform_lists_registered():
    from autodeploy_cli.pipeline.registry import validate_transform_entries

    with pytest.raises(ADError) as e:
        validate_transform_entries(resolve([], ["transforms.export_to_gmm.stage=export"]).transforms)
    msg = str(e.value)
    assert "Unknown transform `export_to_gmm`" in msg and "Did you mean `export_to_gm`?" in msg
    assert "Registered transforms:" in msg and "load_weights" in msg


def test_unknown_transform_option_names_closest():
    from autodeploy_cli.pipeline.registry import validate_transform_entries

    cfg = resolve([], ["transforms.compile_model.backnd=x"])  # options are checked once, by the pipeline
    with pytest.raises(ADError, match=r"Unknown option `transforms.compile_model.backnd`. Did you mean `backend`\?"):
        validate_transform_entries(cfg.transforms)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ADError, match=r"Config file `.*nope.yaml` does not exist"):
        resolve([tmp_path / "nope.yaml"])


def test_trust_remote_code_defaults_false():
    assert resolve().trust_remote_code is False
