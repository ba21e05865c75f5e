"""Mixtral (MoE): `ad run` and the Engine reproduce HF generate token for token (float32, CPU)."""

from tests.e2e.hf_match import check_ad_run, check_engine_chunked


def test_ad_run_matches_hf_generate(tiny_dir):
    check_ad_run(tiny_dir("mixtral"), "mixtral", "attn_page_size=4")


def test_engine_chunked_prefill_matches_hf_generate(tiny_dir):
    check_engine_chunked(tiny_dir("mixtral"), "mixtral", "attn_page_size=8")
