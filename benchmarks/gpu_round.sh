#!/usr/bin/env bash
# One GPU call of a round: `bash benchmarks/gpu_round.sh PHASE [budget_s]` on the H200 machine (see
# ../shared/gpu/README.md). Every step has its own time cap and writes its log / JSON as it goes; at the end
# everything is packed into $OUT/results.tgz (the device tool returns at most 8 files) plus $OUT/summary.txt.
#   tests    the whole `-m gpu` suite (JUnit XML + log)
#   kernels  MoE / MLA / FP8 kernel benches
#   engine   engine-level targets: MoE, FP8, hybrid, MLA end to end, serving
set -u
phase=${1:-tests}
budget=${2:-560}
start=$(date +%s)
W=${OUT:-/tmp/out}/w
mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$W/pip.log" 2>&1 || { echo "wheel install failed" >> "$W/summary.txt"; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
{ echo "commit $(cat .gpu_head 2>/dev/null || echo unknown)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"; } > "$W/env.txt" 2>&1

left() { echo $(( budget - ($(date +%s) - start) )); }
step() {  # step NAME CAP_S COMMAND...: run with min(cap, time left - 25 s), log to $W/NAME.log
  local name=$1 cap=$2; shift 2
  local t=$(( $(left) - 25 )); [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 20 ]; then echo "$name: skipped (no time left)" >> "$W/summary.txt"; return; fi
  local t0=$(date +%s)
  timeout -k 10 "$t" "$@" > "$W/$name.log" 2>&1
  echo "$name: rc=$? in $(( $(date +%s) - t0 )) s (cap $t s)" >> "$W/summary.txt"
}

case "$phase" in
  tests)
    step gpu_tests 600 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout 150 -rfEs --junitxml="$W/gpu_tests.xml" \
      tests/kernels tests/e2e tests/pipeline tests/distributed/test_one_gpu.py tests/ops tests/bench tests/transforms
    ;;
  rest)  # the failures of a first pass (short tracebacks) and the tests it did not reach, then the key benches
    step gpu_failed 100 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout 60 --tb=short -rfE \
      tests/kernels/triton/test_fp8_kv_cache.py tests/kernels/triton/test_triton_mixers.py
    step gpu_rest 330 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 120 --tb=short -rfE \
      tests/pipeline tests/e2e/test_mla_gpu.py tests/e2e/test_run_moe_routing.py tests/e2e/test_gpu_hybrid.py \
      tests/e2e/test_run_fp8.py tests/distributed/test_one_gpu.py tests/ops tests/bench tests/transforms
    step moe_engine 140 python3 benchmarks/moe_bench.py --what engine --skip-hf --out "$W/moe_engine.json"
    ;;
  final)  # the first passes' failures again, then the targets that fit in what is left
    step gpu_fixed 170 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout 90 --tb=short -rfE \
      tests/kernels/triton/test_fp8_kv_cache.py tests/kernels/triton/test_triton_mixers.py \
      tests/pipeline/test_verify_generation.py tests/e2e/test_mla_gpu.py tests/e2e/test_gpu_hybrid.py \
      tests/e2e/test_run_fp8.py tests/distributed/test_one_gpu.py tests/bench/test_bench_gpu.py \
      "tests/e2e/test_run_moe_routing.py::test_gpu_default_pipeline_cuda_graphs_triton_moe_matches_hf"
    step fp8_engine 170 python3 benchmarks/fp8_bench.py --what bf16,fp8 --out "$W/fp8_engine.json"
    step hybrid 110 python3 benchmarks/hybrid_bench.py --what bs1 --no-hf --timeout 100 --out "$W/hybrid.json"
    step mla_kernels 70 python3 benchmarks/mla_bench.py --what kernel --out "$W/mla_kernels.json"
    ;;
  recheck)  # the session-3 failures whose fixes were not re-run, triton / NCCL only (no FlashInfer JIT), fastest first
    step gpu_recheck 400 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 60 --tb=short -rfE \
      tests/kernels/triton/test_triton_mixers.py "tests/kernels/triton/test_fp8_kv_cache.py" -k "not flashinfer" \
      tests/distributed/test_one_gpu.py tests/pipeline/test_verify_generation.py::test_cuda_graph_replay_fault_fails_verify_naming_compile_model \
      tests/e2e/test_run_breadth.py tests/e2e/test_mla_gpu.py tests/e2e/test_run_fp8.py \
      "tests/e2e/test_run_moe_routing.py::test_gpu_default_pipeline_cuda_graphs_triton_moe_matches_hf"
    ;;
  verify5)  # session 5: every -m gpu test whose fix was never run on the H200, triton first, FlashInfer JIT last
    step gpu_triton 240 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 150 --tb=long -rfE --durations=25 \
      tests/kernels/triton/test_triton_moe.py tests/kernels/triton/test_triton_fp8.py \
      "tests/e2e/test_run_breadth.py::test_gpu_alibi_tokens_identical_across_backends_and_cuda_graphs" \
      tests/e2e/test_run_moe_routing.py tests/e2e/test_gpu_hybrid.py tests/bench/test_bench_gpu.py
    step moe_kernels 90 python3 benchmarks/moe_bench.py --what kernels --out "$W/moe_kernels.json"
    step gpu_flashinfer 300 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 200 --tb=short -rfE --durations=25 \
      tests/kernels/triton/test_fp8_kv_cache.py tests/kernels/flashinfer tests/e2e/test_mla_gpu.py tests/e2e/test_run_fp8.py
    ;;
  engine5)  # session 5: the GPU tests the first call did not reach or that were fixed, then FP8 and hybrid targets
    step gpu_rerun 250 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 200 --tb=short -rfE --durations=15 \
      "tests/e2e/test_run_breadth.py::test_gpu_alibi_tokens_identical_across_backends_and_cuda_graphs" \
      tests/bench/test_bench_gpu.py::test_fp8_kv_cache_doubles_the_capacity_ad_bench_reports \
      tests/e2e/test_gpu_hybrid.py tests/e2e/test_mla_gpu.py tests/e2e/test_run_fp8.py
    step fp8_engine 170 python3 benchmarks/fp8_bench.py --what bf16,fp8 --out "$W/fp8_engine.json"
    step hybrid 150 python3 benchmarks/hybrid_bench.py --what bs1,c64,profile --timeout 70 --out "$W/hybrid.json"
    ;;
  last5)  # session 5: the new MLA decode kernel (tests, config sweep), Moonlight end to end, serving
    step mla_tests 70 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout 60 --tb=short -rfE tests/kernels/triton/test_triton_mla.py -x
    step mla_kernels 110 python3 benchmarks/mla_bench.py --what kernel --out "$W/mla_kernels.json"
    step mla_e2e 90 python3 benchmarks/mla_bench.py --what e2e --out "$W/mla_e2e.json"
    step serve 150 python3 benchmarks/serve_bench.py --out "$W/serve" --num-requests 128 --latency-reps 10
    ;;
  a6)  # session 6: the GPU tests never run on the H200 (RoPE precision, MLA default, FP8 capacity fixture, export
       # cache on torch 2.11), build time, serving, the hybrid c64 point against HF at 4 sequences per call
    step gpu_tests6 130 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 100 --tb=short -rfE --durations=10 \
      tests/kernels/triton/test_triton_pointwise.py tests/transforms/test_optimize_rope.py \
      tests/kernels/triton/test_triton_mla.py tests/bench/test_bench_gpu.py::test_fp8_kv_cache_doubles_the_capacity_ad_bench_reports
    step export_cache 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 --tb=short -rfE tests/export/test_export_cache.py
    step build_time 80 python3 benchmarks/build_profile.py --device cuda --runs 2 --out "$W/build_time.json"
    step serve 150 python3 benchmarks/serve_bench.py --out "$W/serve" --num-requests 128 --latency-reps 10
    step hybrid_c64 260 python3 benchmarks/hybrid_bench.py --what c64 --timeout 240 --out "$W/hybrid_c64.json"
    ;;
  b6)  # session 6: prefill CUDA graphs (tests, TTFT on/off), the dense targets, long context, serving latency, MLA e2e
    step gpu_tests_b6 110 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 100 --tb=short -rfE --durations=10 \
      tests/graph/test_cudagraph.py tests/transforms/test_optimize_rope.py "tests/e2e/test_backend_tokens.py" -k "not flashinfer"
    step dense 130 python3 benchmarks/engine_bench.py --what bs1,ttft,profp,c64 --page-size 64 --out "$W/dense.json"
    step ttft_eager 60 python3 benchmarks/engine_bench.py --what ttft,profp --page-size 64 --out "$W/ttft_eager.json" \
      --override "transforms.compile_model.cuda_graph_prefill_tokens=[]"
    step long 80 python3 benchmarks/engine_bench.py --what long --max-seq-len 33024 --page-size 64 --out "$W/long.json" \
      --override enable_chunked_prefill=true
    step serve 110 python3 benchmarks/serve_bench.py --out "$W/serve" --num-requests 128 --latency-reps 10
    step tput 110 python3 benchmarks/engine_bench.py --what tput,prof --page-size 64 --out "$W/tput.json"
    step mla_e2e 90 python3 benchmarks/mla_bench.py --what e2e --out "$W/mla_e2e.json"
    ;;
  c6)  # session 6: programmatic dependent launch (tests, bs1 A/B), the c64 sampled ratio, throughput, MLA + hybrid bs1
    step gpu_tests_c6 120 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 100 --tb=short -rfE --durations=10 \
      tests/kernels/triton/test_triton_gemv.py tests/kernels/triton/test_triton_attention.py \
      tests/kernels/triton/test_triton_pointwise.py tests/graph/test_cudagraph.py tests/e2e/test_backend_tokens.py \
      -k "not flashinfer"
    step dense_pdl 100 python3 benchmarks/engine_bench.py --what bs1,prof,ttft,c64 --page-size 64 --out "$W/dense_pdl.json"
    step dense_nopdl 60 env AD_TRITON_PDL=0 python3 benchmarks/engine_bench.py --what bs1,prof --page-size 64 \
      --out "$W/dense_nopdl.json"
    step tput 100 python3 benchmarks/engine_bench.py --what tput --page-size 64 --out "$W/tput.json"
    step mla_e2e 60 python3 benchmarks/mla_bench.py --what e2e --out "$W/mla_e2e.json"
    step hybrid_bs1 70 python3 benchmarks/hybrid_bench.py --what bs1 --timeout 60 --out "$W/hybrid_bs1.json"
    ;;
  a7)  # session 7: the sampling kernel (tests, op timing), c64 sampled vs greedy with batch-64 step profiles, bs1, tput
    step gpu_tests_a7 150 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 100 --tb=short -rfE --durations=10 \
      tests/kernels/triton/test_triton_sampling.py tests/runtime/test_sampler.py tests/e2e/test_backend_tokens.py \
      -k "not flashinfer"
    step dense_a7 170 python3 benchmarks/engine_bench.py --what sampler,c64,profs,bs1 --page-size 64 --out "$W/dense_a7.json"
    step tput_a7 110 python3 benchmarks/engine_bench.py --what tput,prof --page-size 64 --out "$W/tput_a7.json"
    ;;
  b7)  # session 7: sampler fixes (lane-wise sums, fixed pointer alignment), the decode reduce skipped at one split,
       # a decode-only batch-256 profile
    step gpu_tests_b7 170 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 100 --tb=short -rfE --durations=10 \
      tests/kernels/triton/test_triton_sampling.py tests/runtime/test_sampler.py tests/kernels/triton/test_triton_attention.py \
      tests/kernels/triton/test_fp8_kv_cache.py tests/graph/test_cudagraph.py tests/e2e/test_backend_tokens.py -k "not flashinfer"
    step dense_b7 170 python3 benchmarks/engine_bench.py --what sampler,c64,profs,bs1,ttft --page-size 64 --out "$W/dense_b7.json"
    step tput_b7 130 python3 benchmarks/engine_bench.py --what tput,prof --page-size 64 --out "$W/tput_b7.json"
    ;;
  kernels)
    step moe_kernels 200 python3 benchmarks/moe_bench.py --what kernels --out "$W/moe_kernels.json"
    step mla_kernels 200 python3 benchmarks/mla_bench.py --what kernel --out "$W/mla_kernels.json"
    step fp8_kernels 150 python3 benchmarks/fp8_bench.py --what kernels --out "$W/fp8_kernels.json"
    ;;
  engine)
    step moe_engine 190 python3 benchmarks/moe_bench.py --what engine --out "$W/moe_engine.json"
    step fp8_engine 150 python3 benchmarks/fp8_bench.py --what bf16,fp8 --out "$W/fp8_engine.json"
    step hybrid 120 python3 benchmarks/hybrid_bench.py --what bs1,c64 --out "$W/hybrid.json"
    step mla_e2e 90 python3 benchmarks/mla_bench.py --what e2e --out "$W/mla_e2e.json"
    ;;
  serve)
    step serve 400 python3 benchmarks/serve_bench.py --out "$W/serve"
    ;;
  *) echo "unknown phase $phase" >> "$W/summary.txt" ;;
esac
tail -n 30 "$W"/gpu_tests.log >> "$W/summary.txt" 2>/dev/null
cp "$W/summary.txt" "${OUT:-/tmp/out}/summary.txt"
tar czf "${OUT:-/tmp/out}/results.tgz" -C "$W" . && rm -rf "$W"
