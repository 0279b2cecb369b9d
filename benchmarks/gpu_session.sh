#!/usr/bin/env bash
# One GPU call's worth of checks and measurements, written under $OUT (default ./gpu-out).
#   bash benchmarks/gpu_session.sh tests    # tests/gpu alone
#   bash benchmarks/gpu_session.sh check    # tests/gpu + kernel micro-benchmarks (~5 min on an H100)
#   bash benchmarks/gpu_session.sh speed    # 8B-shape radixlm vs HF, offline shapes + shared-prefix serving
#   bash benchmarks/gpu_session.sh final    # tests/gpu, then speed (~8 min on an H100)
#   bash benchmarks/gpu_session.sh gsp      # the shared-prefix serving run alone
#   bash benchmarks/gpu_session.sh fp8      # FP8 GPU tests, GEMM vs _scaled_mm, 8B fp8 vs bf16 vs HF
#   bash benchmarks/gpu_session.sh fp8-gemv # W8A16 GEMV: tests, tuning + threshold, bench, 8B fp8 b=1 (~8 min)
#   bash benchmarks/gpu_session.sh fp8-kernels  # fp8 kernel tests; cuBLAS-vs-Triton threshold; GEMV tuning; GEMM bench
#   bash benchmarks/gpu_session.sh profile  # kernel-by-kernel profile of 8k prefill and b=1 decode, bf16 and fp8
#   bash benchmarks/gpu_session.sh fp8-final  # 8B shape: fp8 (cuBLAS/Triton) vs bf16 vs HF, b=1/64 and 8k prefill
#   bash benchmarks/gpu_session.sh demo-model  # train the demo model (TRAIN_ARGS), its folder as tar parts in $OUT
#   bash benchmarks/gpu_session.sh demo-model-pair  # the same, twice at once: seed 0 and seed 1
#   bash benchmarks/gpu_session.sh demo-speed  # time the demo model's training step variants
#   bash benchmarks/gpu_session.sh programs # issue 27: program workloads on the 8B shape, cache on/off,
#                                           # this tree vs an older one in build/old-radixlm (carry it)
#   bash benchmarks/gpu_session.sh constrained  # issue 21: constrained decoding cost, b=1/64, both backends
#   bash benchmarks/gpu_session.sh hicache  # hierarchical radix cache: 64x8-turn chats on the 8B shape, host
#                                           # tier off / write_back / write_through (~5 min on an H100)
#   bash benchmarks/gpu_session.sh spec     # issue 23: speculative decoding's cost and its gain per accepted length
#   bash benchmarks/gpu_session.sh jf-fp32  # jump-forward on/off identity at b=64, 8B shape in float32
#   bash benchmarks/gpu_session.sh tp       # 2 GPUs: TP/DP parity and the 8B shape at TP=1 vs TP=2
#   bash benchmarks/gpu_session.sh view     # issue 26: a cache snapshot's cost during an 8B batch-64 decode
#   bash benchmarks/gpu_session.sh floor    # issue 25: dense GEMV tuning, 8B b=1/64 with and without it, profile
#                                           # (TUNE_FP8=1: first tune the fp8 GEMV in CUDA graphs)
#   bash benchmarks/gpu_session.sh timeline # issue 25: b=1 decode's device timeline under PDL, kernel by kernel
#   bash benchmarks/gpu_session.sh moe      # issue 24: fused MoE GPU tests, Qwen3-30B-A3B shape vs HF
#   bash benchmarks/gpu_session.sh moe-tune # issue 24: tune the fused MoE kernel's tiles
# The GPU image lacks pyzmq, msgspec and outlines-core: bring them as wheels in .whl/ (see
# benchmarks/README.md); this script installs them into /tmp/site when .whl/ exists.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/radixlm
  export PYTHONPATH=/tmp/pkg:/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv | tee "$OUT/nvidia-smi.txt"
MODE=${1:-check}
if [ "$MODE" = final ]; then
  python3 -m pytest -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu-tests.log"
  MODE=speed
fi
case "$MODE" in
  demo-model)  # demo_model/train.py; the folder comes back as 15 MB pieces (cat them, then untar)
    rm -rf /tmp/demo-model
    python3 -m radixlm.demo_model.train --out /tmp/demo-model ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log" || exit 1
    tar -C /tmp -cf /tmp/demo-model.tar demo-model && split -b 15M /tmp/demo-model.tar "$OUT/demo-model.tar.part-"
    ;;
  demo-model-pair)  # two trainings at once on one card: the default command, and it with --seed 1
    rm -rf /tmp/demo-model /tmp/demo-model-seed1
    python3 -m radixlm.demo_model.train --out /tmp/demo-model ${TRAIN_ARGS:-} > "$OUT/train.log" 2>&1 &
    python3 -m radixlm.demo_model.train --out /tmp/demo-model-seed1 --seed 1 ${TRAIN_ARGS:-} > "$OUT/train-seed1.log" 2>&1 &
    wait
    tar -C /tmp -cf /tmp/demo-models.tar demo-model demo-model-seed1 && split -b 15M /tmp/demo-models.tar "$OUT/demo-models.tar.part-"
    ;;
  demo-speed)  # the demo model's training step: eager/compile x deterministic, then two trainings at once
    python3 benchmarks/bench_demo_training.py --variants "${VARIANTS:-eager,compile,eager-det,compile-det}" \
      --out "$OUT/demo-speed.json" 2>&1 | tee "$OUT/demo-speed.log"
    for i in 1 2; do
      python3 benchmarks/bench_demo_training.py --variants compile --steps 200 --out "$OUT/demo-speed-pair$i.json" \
        > "$OUT/demo-speed-pair$i.log" 2>&1 &
    done
    wait
    ;;
  tests)
    python3 -m pytest -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu-tests.log"
    ;;
  check)
    python3 -m pytest -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu-tests.log"
    python3 benchmarks/bench_kernels.py --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
    ;;
  programs)  # benchmarks/programs/run.py on the 8B shape (Llama-3 vocabulary), radix cache on and off,
    # through each program's run_batch: this tree, and the package tree in build/old-radixlm (made with
    # `git archive OLD -- ':!tests' ':!benchmarks' ':!examples' ':!demo_model/weights'`, carried), the
    # same harness for both, alternated old/new/old/new so drift hits both
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    mkdir -p /tmp/pkg-old && ln -sfn "$PWD/build/old-radixlm" /tmp/pkg-old/radixlm
    for round in 1 2; do
      for label in old new; do
        pkg=/tmp/pkg; [ "$label" = old ] && pkg=/tmp/pkg-old
        [ "$label" = old ] && [ ! -d build/old-radixlm ] && continue
        PYTHONPATH=$pkg:/tmp/site RADIXLM_LABEL=$label python3 benchmarks/programs/run.py --model /tmp/bench-8b \
          --device cuda --workloads mmlu,few-shot,select,react --ablations cache --num-programs 32 \
          --repeats "${REPEATS:-3}" --warmup-programs "${WARMUP:-2}" --json "$OUT/programs-$label-$round.json" 2>&1 | tee "$OUT/programs-$label-$round.log"
      done
    done
    ;;
  constrained)  # issue 21: constrained decoding's cost on the 8B shape (Llama 3's 128k vocabulary):
    # bench_json.py per grammar backend at batch 1 and 64 (greedy; ms/step beside the same prompts
    # unconstrained, same process), then the llguidance mask benchmark on this host's cores (the
    # large vocabulary; batch masks on llguidance's thread pool). Logs come back as logs.tgz.
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    for B in ${BATCHES:-1 64}; do
      for G in llguidance outlines; do
        timeout 200 python3 benchmarks/bench_json.py --model /tmp/bench-8b --device cuda --grammar-backend $G \
          --num-requests $B --modes greedy --skip-mask --repeats 3 --json "$OUT/json-$G-b$B.json" \
          > "$OUT/json-$G-b$B.log" 2>&1
        echo "== $G batch $B"; grep -E "^\| greedy" "$OUT/json-$G-b$B.log"
      done
    done
    timeout 240 python3 benchmarks/bench_grammar_backends.py --vocab large --backends llguidance --threads 1 \
      --out "$OUT/grammar-backends-large.json" > "$OUT/grammar-backends-large.log" 2>&1
    tail -25 "$OUT/grammar-backends-large.log"
    (cd "$OUT" && tar -czf logs.tgz ./*.log && rm -f ./*.log)
    ;;
  hicache)  # the host tier of the radix cache (benchmarks/bench_hicache.py): 64 conversations x 8 turns
    # (final histories of 2048 tokens: 131k tokens in all, 5.3x the device pool of 24576 tokens; host pool 8x
    # that, ~24 GiB pinned), one engine per variant. Estimate: build ~1.5 min, ~30 s start per engine, off
    # ~40 s (it recomputes most of 860k prompt tokens), write_back/write_through ~20 s each. The timeout
    # bounds a stuck run; the JSON is rewritten after each variant, so finished variants survive it.
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_host_cache.py 2>&1 | tail -30 > "$OUT/gpu-tests.log"
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    timeout ${BENCH_TIMEOUT:-330} python3 benchmarks/bench_hicache.py --model /tmp/bench-8b --device cuda --dtype bfloat16 \
      --max-total-tokens 24576 --hicache-ratio 8 --variants "${VARIANTS:-off,write_back,write_through}" \
      --json "$OUT/hicache.json" 2>&1 | tee "$OUT/hicache.log"
    ;;
  spec)  # issue 23: speculative decoding on the 8B shape. Its cost where drafts rarely hold (random weights:
    # bench_offline at batch 1 and 64 beside the same runtime without it), then drafts of controlled
    # acceptance (the reference output in the radix tree, lookahead) swept over the draft length at batch 1
    # (the GPU tests: `tests` mode, or SPEC_TESTS=1 here when the call has the time)
    [ "${SPEC_TESTS:-0}" = 1 ] && timeout 150 python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_speculative.py \
      2>&1 | tail -30 > "$OUT/gpu-tests.log"
    # (--reps 4: batch 64 gets 3 timed runs; one run was too noisy for a 0% claim)
    timeout 300 python3 benchmarks/bench_offline.py --shape llama-3.1-8b --keep-model --model-dir /tmp/bench-8b \
      --engines radixlm --ablations spec-ngram,spec-lookahead --batch-sizes 1,64 --output-len 128 --reps 4 \
      --prefill-len 1024 --out "$OUT/spec-overhead.json" > "$OUT/spec-overhead.log" 2>&1
    tail -12 "$OUT/spec-overhead.log"
    # bf16 (against the bf16 byte floor), then float32, where a verify step computes what one-row
    # decoding does and the drafts' acceptance is exactly the reference's
    for DT in bfloat16 float32; do
      timeout 200 python3 benchmarks/bench_spec_reference.py --model /tmp/bench-8b --device cuda --dtype $DT \
        --draft-tokens "${DRAFTS:-2,4,8}" --reps 2 --output-len 128 --json "$OUT/spec-reference-$DT.json" 2>&1 \
        | tee "$OUT/spec-reference-$DT.log" | tail -7
    done
    ;;
  jf-fp32)  # jump-forward's identical outputs at batch 64 on the 8B shape in float32 (bf16 differed there)
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    for G in outlines llguidance; do
      timeout 200 python3 benchmarks/bench_json.py --model /tmp/bench-8b --device cuda --dtype float32 \
        --grammar-backend $G --num-requests 64 --modes greedy --skip-mask --repeats 1 \
        --json "$OUT/json-fp32-$G-b64.json" > "$OUT/json-fp32-$G-b64.log" 2>&1
      echo "== $G batch 64 float32"; grep -E "^\| greedy|differ" "$OUT/json-fp32-$G-b64.log"
    done
    ;;
  gsp)  # the shared-prefix serving run alone (the model folder is rebuilt first)
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    python3 benchmarks/serving.py --model /tmp/bench-8b --device cuda --dtype bfloat16 --max-total-tokens 100000 \
      --gsp-num-groups 16 --gsp-prompts-per-group 8 --gsp-system-prompt-len 2048 --gsp-question-len 128 \
      --gsp-output-len 128 --repeats "${REPEATS:-3}" --ablate --hf-baseline --hf-batch-size 64 \
      --json "$OUT/serving-gsp.json" 2>&1 | tee "$OUT/serving-gsp.log"
    ;;
  fp8)  # FP8 tests, GEMM vs torch._scaled_mm, and the 8B shape: fp8 / fp8 + fp8 KV vs bf16 vs HF eager
    timeout 100 python3 benchmarks/bench_fp8_gemm.py --reps 30 --out "$OUT/fp8-gemm.json" > "$OUT/fp8-gemm.log" 2>&1
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines radixlm,hf-eager --batch-sizes 1,64 \
      --reps 2 --ablations fp8,fp8-kv --out "$OUT/offline-fp8.json" > "$OUT/offline-fp8.log" 2>&1
    python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_fp8.py tests/gpu/test_gpu_fp8_kernels.py \
      > "$OUT/gpu-tests-fp8.log" 2>&1
    ;;
  fp8-gemv)  # the W8A16 GEMV (runtime/kernels/triton/fp8_gemv.py). 1) the fp8 kernel tests (GEMV with the
    # committed configs); 2) tune its configs and the M up to which it beats quant + W8A8 GEMM: rewrites
    # fp8_gemv_configs.json in this tree (copied to $OUT: commit it from there); 3) GEMV vs W8A8 vs _scaled_mm at
    # M = 1..16 with the tuned configs; 4) the 8B shape with fp8 weights at batch 1 with the tuned threshold.
    # BASELINE=1 adds 4) before 2), with the committed file (GEMV off): a same-card W8A8 baseline (+~1.5 min).
    CFG=runtime/kernels/triton/fp8_gemv_configs.json
    cp "$CFG" "$OUT/fp8_gemv_configs.committed.json"
    timeout 150 python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_fp8_kernels.py > "$OUT/gpu-tests-fp8-kernels.log" 2>&1
    tail -3 "$OUT/gpu-tests-fp8-kernels.log"
    OFFLINE_B1=(python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --ablations fp8
                --batch-sizes 1 --reps 2)
    if [ "${BASELINE:-0}" = 1 ]; then
      timeout 120 "${OFFLINE_B1[@]}" --out "$OUT/offline-fp8-b1-w8a8.json" > "$OUT/offline-fp8-b1-w8a8.log" 2>&1
    fi
    timeout 210 python3 benchmarks/tune_fp8_gemm.py --gemv --reps 20 --results "$OUT/tune-gemv.json" 2>&1 \
      | tee "$OUT/tune-gemv.log" | grep -E "^GEMV|wrote|FAILURE|Error"
    cp "$CFG" "$OUT/fp8_gemv_configs.json"
    timeout 100 python3 benchmarks/bench_fp8_gemm.py --m 1 2 4 8 16 --reps 20 --out "$OUT/fp8-gemv-bench.json" \
      > "$OUT/fp8-gemv-bench.log" 2>&1
    timeout 120 "${OFFLINE_B1[@]}" --out "$OUT/offline-fp8-b1.json" > "$OUT/offline-fp8-b1.log" 2>&1
    grep -hE "decode b=1" "$OUT"/offline-fp8-b1*.log
    ;;
  fp8-kernels)  # commit $OUT/fp8_gemm_configs.json and $OUT/fp8_gemv_configs.json from it (~8 min on an H100)
    timeout 170 python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_fp8_kernels.py > "$OUT/gpu-tests-fp8-kernels.log" 2>&1
    tail -3 "$OUT/gpu-tests-fp8-kernels.log"
    timeout 100 python3 benchmarks/tune_fp8_gemm.py --scaled-mm --reps 20 --results "$OUT/tune-scaled-mm.json" 2>&1 \
      | tee "$OUT/tune-scaled-mm.log" | grep -E "cuBLAS|wrote|FAILURE|Error|unavailable"
    cp runtime/kernels/triton/fp8_gemm_configs.json "$OUT/fp8_gemm_configs.json"
    timeout 200 python3 benchmarks/tune_fp8_gemm.py --gemv --reps 20 --results "$OUT/tune-gemv.json" 2>&1 \
      | tee "$OUT/tune-gemv.log" | grep -E "^GEMV|wrote|FAILURE|Error"
    cp runtime/kernels/triton/fp8_gemv_configs.json "$OUT/fp8_gemv_configs.json"
    timeout 110 python3 benchmarks/bench_fp8_gemm.py --reps 20 --out "$OUT/fp8-gemm.json" > "$OUT/fp8-gemm.log" 2>&1
    tail -45 "$OUT/fp8-gemm.log" | grep -v "^wrote"
    ;;
  profile)  # the 8B shape in one process under torch.profiler: bf16, then fp8 weights
    for Q in none fp8; do
      timeout 280 python3 benchmarks/profile_forward.py --model-dir /tmp/bench-8b --quantization $Q \
        --out "$OUT/profile-$Q.json" > "$OUT/profile-$Q.log" 2>&1; grep -A14 "==" "$OUT/profile-$Q.log"
    done
    ;;
  timeline)  # issue 25: where a batch-1 decode step's time goes with PDL on (each kernel's advance of the
    # device timeline, and one decoder layer position by position), fp8 then bf16 (PROFILES); the
    # first run builds the 8B folder
    for Q in ${PROFILES-fp8 none}; do
      timeout 280 python3 benchmarks/profile_forward.py --model-dir /tmp/bench-8b --quantization $Q --prefill-len 1024 \
        --out "$OUT/timeline-$Q.json" > "$OUT/timeline-$Q.log" 2>&1; sed -n '/== decode/,$p' "$OUT/timeline-$Q.log" | head -60
    done
    ;;
  fp8-final)  # the done-when table of issue 8: HF eager, radixlm bf16, fp8 (cuBLAS from the tuned M), fp8 Triton-only
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines radixlm,hf-eager --batch-sizes 1,64 \
      --reps 2 --ablations "${ABLATIONS:-fp8,fp8-triton}" --out "$OUT/offline-fp8.json" > "$OUT/offline-fp8.log" 2>&1
    grep -E "decode|prefill" "$OUT/offline-fp8.log" | grep -v "^|"
    ;;
  tp)  # on a 2-GPU machine: TP/DP parity, then the 8B shape at TP=1 vs TP=2 (NCCL_NVLS_ENABLE=0 above)
    python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_tensor_parallel.py 2>&1 | tee "$OUT/gpu-tests-tp.log" | tail -3
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines radixlm --batch-sizes 1,64 --reps 2 \
      --ablations tp2 --out "$OUT/offline-tp.json" > "$OUT/offline-tp.log" 2>&1
    ;;
  view)  # issue 26: radix-tree snapshots taken during a batch-64 decode of the 8B shape, beside none
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    python3 benchmarks/bench_cache_view.py --model /tmp/bench-8b --device cuda --dtype bfloat16 --batch-size 64 \
      --fill-prompts 2000 --output-len 128 --reps 6 --intervals-ms 0,100,2000 --json "$OUT/cache-view.json" \
      2>&1 | tee "$OUT/cache-view.log"
    ;;
  floor)  # issue 25: batch-1 decode against the byte floor (~9 min on an H100). Tune the dense (bf16) GEMV
    # against cuBLAS (rewrites dense_gemv_configs.json in this tree; copied to $OUT: commit it from there),
    # then the 8B shape in one process: bf16 and fp8 each beside their runs without PDL and with the
    # gated down-projection GEMV, fp8 also with an fp8 LM head, at batch 1 and 64; then the GPU
    # tests of the changed kernels and the kernel-by-kernel profile (PDL off: under PDL a kernel's
    # time would include its wait for the one ahead)
    if [ "${TUNE:-1}" = 1 ]; then  # TUNE=0: the committed table as it is (the gemv-table ablation's baseline)
      cp runtime/kernels/triton/dense_gemv_configs.json /tmp/dense_gemv_configs.committed.json
      export BENCH_DENSE_GEMV_TABLE=/tmp/dense_gemv_configs.committed.json
      timeout ${TUNE_TIMEOUT:-130} python3 benchmarks/tune_dense_gemv.py --m ${TUNE_M:-1 2} --quick --reps 15 ${TUNE_ARGS:-} \
        --results "$OUT/tune-dense-gemv.json" 2>&1 | tee "$OUT/tune-dense-gemv.log" | grep -E "^dense|thresholds|FAILURE|Error"
      cp runtime/kernels/triton/dense_gemv_configs.json "$OUT/dense_gemv_configs.json"
    fi
    if [ "${TUNE_FP8:-0}" = 1 ]; then  # the fp8 GEMV at TUNE_FP8_M inside CUDA graphs, the wide round too;
      # the committed table stays the baseline of the fp8-gemv-table ablation
      cp runtime/kernels/triton/fp8_gemv_configs.json /tmp/fp8_gemv_configs.committed.json
      export BENCH_FP8_GEMV_TABLE=/tmp/fp8_gemv_configs.committed.json
      timeout ${TUNE_FP8_TIMEOUT:-240} python3 benchmarks/tune_fp8_gemm.py --gemv --m ${TUNE_FP8_M:-1} --chain-mb 512 --wide \
        --shapes ${TUNE_FP8_SHAPES:-28672,4096 4096,14336 6144,4096 4096,4096} \
        --reps 20 --results "$OUT/tune-gemv-chain.json" 2>&1 | tee "$OUT/tune-gemv-chain.log" | grep -E "^GEMV|FAILURE|Error"
      cp runtime/kernels/triton/fp8_gemv_configs.json "$OUT/fp8_gemv_configs.json"
    fi
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --engines none --keep-model --model-dir /tmp/bench-8b \
      --out "$OUT/build.json" > "$OUT/build.log" 2>&1 || { tail "$OUT/build.log"; exit 1; }
    timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/bench_offline.py --shape llama-3.1-8b --keep-model --model-dir /tmp/bench-8b \
      --engines radixlm --ablations "${ABLATIONS:-no-pdl,fused-silu,fp8,fp8-no-pdl,fp8-fused-silu,fp8-lm-head}" --batch-sizes "${BATCHES:-1,64}" \
      --reps 3 --out "$OUT/offline-floor.json" > "$OUT/offline-floor.log" 2>&1
    grep -E "decode b=|prefill" "$OUT/offline-floor.log" | grep -v "^|"
    timeout 130 python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_kernels.py tests/gpu/test_gpu_fp8_kernels.py \
      tests/gpu/test_gpu_engine.py tests/gpu/test_gpu_rotary_kv_store.py -x -k "${FLOOR_K:-pdl or gated or dense_gemv or gemv or rotary or store_kv or fp32_greedy}" \
      > "$OUT/gpu-tests-floor.log" 2>&1; tail -3 "$OUT/gpu-tests-floor.log"
    for Q in ${PROFILES-none fp8}; do  # PROFILES="": none
      RADIXLM_PDL=0 timeout 50 python3 benchmarks/profile_forward.py --model-dir /tmp/bench-8b --quantization $Q \
        --out "$OUT/profile-$Q.json" > "$OUT/profile-$Q.log" 2>&1; grep -A12 "== decode b=1" "$OUT/profile-$Q.log"
    done
    ;;
  moe)  # issue 24: fused MoE kernel tests and the tiny MoE models on the GPU, then the Qwen3-30B-A3B
        # shape (all 48 layers, or MOE_LAYERS) radixlm bf16 / fp8 vs HF eager
    timeout 150 python3 -m pytest -p no:cacheprovider tests/gpu/test_gpu_fused_moe.py 2>&1 | tee "$OUT/gpu-tests-moe.log" | tail -3
    # all 48 layers are a 61 GB folder: it goes to /dev/shm (RAM), the disk has about 64 GB free
    python3 benchmarks/bench_moe.py ${MOE_LAYERS:+--num-layers $MOE_LAYERS} --model-dir "${MOE_DIR:-/dev/shm/radixlm-bench-moe}" \
      --out "$OUT/moe.json" 2>&1 | tee "$OUT/moe.log"
    ;;
  moe-tune)  # commit $OUT/fused_moe_configs.json as runtime/kernels/triton/fused_moe_configs.json
    python3 benchmarks/tune_fused_moe.py --out "$OUT/fused_moe_configs.json" 2>&1 | tee "$OUT/moe-tune.log"
    ;;
  speed)
    python3 benchmarks/bench_offline.py --shape llama-3.1-8b --keep-model --model-dir /tmp/bench-8b \
      --ablations "${ABLATIONS:-no-overlap,no-cuda-graph}" --out "$OUT/offline.json" 2>&1 | tee "$OUT/offline.log"
    python3 benchmarks/serving.py --model /tmp/bench-8b --device cuda --dtype bfloat16 --max-total-tokens 100000 \
      --gsp-num-groups 16 --gsp-prompts-per-group 8 --gsp-system-prompt-len 2048 --gsp-question-len 128 \
      --gsp-output-len 128 --repeats 2 --ablate --hf-baseline --hf-batch-size 64 \
      --json "$OUT/serving-gsp.json" 2>&1 | tee "$OUT/serving-gsp.log"
    ;;
esac
