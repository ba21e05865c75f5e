"""The `ad` entry point: help, print-config, build report, dump-graphs, and one-paragraph errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from autodeploy_cli.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_commands():
    """Every command is listed by `ad --help` and answers its own `--help` with its own description."""
    top = invoke("--help").output
    own = {"build": "Build the optimised model", "run": "generate completions", "bench": "Benchmark the built model",
           "dump-graphs": "write the graph after every transform", "models": "model registry"}
    for cmd, words in own.items():
        assert f" {cmd} " in top, cmd
        result = invoke(cmd, "--help")
        assert result.exit_code == 0 and f"Usage: ad {cmd}" in result.output and words in result.output, cmd


def test_build_help_documents_config_overrides_print_config():
    out = invoke("build", "--help").output
    assert "--config" in out and "--print-config" in out and "key.sub=value" in out


def test_help_does_not_import_torch():
    code = "import sys; from autodeploy_cli.cli import app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_module_entry_point_works():
    out = subprocess.run([sys.executable, "-m", "autodeploy_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "dump-graphs" in out.stdout


def test_print_config_shows_resolved_yaml(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("max_seq_len: 1024\n")
    res = invoke("build", "--config", str(extra), "--print-config", "--max-batch-size=3", "attn_page_size=16")
    assert res.exit_code == 0
    import yaml

    cfg = yaml.safe_load(res.output)
    assert (cfg["max_seq_len"], cfg["max_batch_size"], cfg["attn_page_size"]) == (1024, 3, 16)
    assert cfg["transforms"]["export_to_gm"]["stage"] == "export"


def test_build_prints_report_in_stage_order_and_writes_json(tmp_path):
    report = tmp_path / "r.json"
    res = invoke("build", "--report", str(report))
    assert res.exit_code == 0, res.output
    assert "ad build: ad-tiny-llama" in res.output
    data = json.loads(report.read_text())
    names = [t["name"] for t in data["transforms"]]
    stages = [t["stage"] for t in data["transforms"]]
    order = ["factory", "export", "post_export", "pattern_matcher", "sharding", "weight_load", "post_load_fusion",
             "cache_init", "compile"]
    assert [order.index(s) for s in stages] == sorted(order.index(s) for s in stages)
    assert names[0] == "build_model" and "load_weights" in names
    assert data["graph_nodes"]["final"] > 0 and "canonical_ops" in data


def test_dump_graphs_writes_one_file_per_entry(tmp_path):
    out = tmp_path / "g"
    res = invoke("dump-graphs", "--out", str(out))
    assert res.exit_code == 0, res.output
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.pipeline.registry import ordered_entries

    entries = ordered_entries(resolve().transforms)
    files = sorted(p.name for p in out.glob("*.txt"))
    assert files == [f"{i:03d}_{o.stage}_{n}.txt" for i, (n, o) in enumerate(entries, start=1)]
    assert f"wrote {len(files)} graph files" in res.output


def one_paragraph_error(res, *fragments: str) -> str:
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert text.startswith("ad: error: ") and "Traceback" not in text and "\n\n" not in text
    for frag in fragments:
        assert frag in text, text
    return text


def test_error_wrong_key():
    one_paragraph_error(invoke("build", "max_seqlen=2"), "Unknown config key `max_seqlen`", "Did you mean `max_seq_len`?")


def test_error_wrong_type():
    one_paragraph_error(invoke("build", "max_seq_len=long"), "Wrong type for config key `max_seq_len`")


def test_error_unknown_transform():
    one_paragraph_error(invoke("build", "transforms.fuse_everything.stage=compile"),
                        "Unknown transform `fuse_everything`", "Registered transforms:")


def test_error_unknown_model():
    one_paragraph_error(invoke("build", "--model", "tiny-lama"), "Unknown model `tiny-lama`",
                        "Did you mean `ad-tiny-llama`?")


def test_error_hub_id_offline():
    one_paragraph_error(invoke("build", "--model", "nobody-here/no-such-model-xyz"),
                        "Could not load the config of `nobody-here/no-such-model-xyz`", "model=/path/to/hf_dir")


def test_error_missing_config_file(tmp_path):
    one_paragraph_error(invoke("build", "--config", str(tmp_path / "missing.yaml")), "missing.yaml` does not exist")


def test_error_non_empty_dump_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    one_paragraph_error(invoke("dump-graphs", "--out", str(tmp_path)), "is not empty and was not created by `ad`")
    assert (tmp_path / "keep.txt").exists()
