"""Gemma 3 (sliding-window + full layers): `ad run` and the Engine reproduce HF generate token for token."""

from tests.e2e.hf_match import check_ad_run, check_engine_chunked


def test_ad_run_matches_hf_generate(tiny_dir):
    check_ad_run(tiny_dir("gemma3"), "gemma3", "attn_page_size=4")


def test_engine_chunked_prefill_matches_hf_generate(tiny_dir):
    check_engine_chunked(tiny_dir("gemma3"), "gemma3", "attn_page_size=8")
