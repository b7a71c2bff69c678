#!/usr/bin/env bash
# GPU check for an H100/H200 (no network), in parts that each fit one 10-minute device call:
#   PART=kernels-fwd     bash scripts/gpu_check.sh  # ISA forward kernels against the reference (the GPU tests of
#                                                   # tests/test_isa_*.py but the release's and those of kernels-bwd)
#   PART=kernels-bwd     bash scripts/gpu_check.sh  # ISA backward GPU tests, a block with ISA under torch.compile, and
#                                                   # the Gluon Taylor launch against the Triton one
#   PART=kernels-release bash scripts/gpu_check.sh  # release-rule kernel GPU tests, kernel bench, selection bench
#   PART=model           bash scripts/gpu_check.sh  # DiT GPU tests (test_model_*.py), DiT forward bench eager and compiled
#   PART=train           bash scripts/gpu_check.sh  # training GPU tests (test_train_*.py), training-step bench eager and
#                                                   # compiled (ISA and dense)
#   PART=deepspeed       bash scripts/gpu_check.sh  # DeepSpeed smoke runs (needs .whl/deepspeed and its dependencies)
#   PART=learn           bash scripts/gpu_check.sh  # the learning benchmark at GPU scale (docs/learning.md)
#   PART=kernels: the three kernel parts in a row; PART=all (default): every part but learn (longer than one call).
# Each part ends with one table line per section and its time (gpu_check_summary.txt in $OUT); each test log ends
# with every test's duration over 1 s, so the split can follow the measured times.
# Env, within a part: SKIP_TESTS=1, SKIP_BENCH=1, DIT_BENCH=0, TRAIN_BENCH=0, EVAL_BENCH=1 (scoring
# throughput, eval/bench.py), EDIT_BENCH=1 (a whole edit, ISA vs dense; EDIT_BENCH_ARGS passes options; in the model
# part), GPU_TESTS=paths, PYTEST_ARGS=..., TIMELINE=1 (one forward's kernels on the GPU's clock at each shape, traces
# in $OUT; kernels-release part), TRAIN_BENCH_ARGS, LEARN_ARGS, LEARN_TIMEOUT. The learn part trains in
# outputs/learn-gpu, reusing its finished stages: make its data here first with `liveditor learn --scale gpu --out
# outputs/learn-gpu --until codec` and carry outputs/learn-gpu.
# Triton's and Inductor's caches live in outputs/ (ignored by git), so a part run again on a warm machine does not
# compile its kernels again.
# Carried wheels (in .whl/, built for the device's Python 3.12: device/README.md) are installed first when present.
# Full logs go to $OUT (or outputs/).
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${PART:-all}
PARTS="kernels-fwd kernels-bwd kernels-release model train deepspeed learn"
case "$PART" in
  kernels) RUN_PARTS="kernels-fwd kernels-bwd kernels-release";;
  all) RUN_PARTS="kernels-fwd kernels-bwd kernels-release model train deepspeed";;
  *) case " $PARTS " in *" $PART "*) RUN_PARTS=$PART;;
       *) echo "gpu_check: PART must be one of: $PARTS, kernels, all; got '$PART'" >&2; exit 2;; esac;;
esac
runs() { case " $RUN_PARTS " in *" $1 "*) return 0;; esac; return 1; }
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  # All at once; where one wheel does not install (built for another Python, say), each alone, naming the failures.
  if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>/dev/null; then
    for w in .whl/*.whl; do
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$w" >/dev/null 2>&1 \
        || echo "gpu_check: carried wheel $w does not install here (python3 is $(python3 -V 2>&1)); rebuild it as device/README.md says" >&2
    done
  fi
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# Import the repo without installing it: build a `liveditor` package view with the mapped subpackages.
python3 scripts/dev_path.py /tmp/liveditor_view >/dev/null && export PYTHONPATH=/tmp/liveditor_view:${PYTHONPATH:-}
REPO=$PWD
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
mkdir -p outputs/triton_cache outputs/inductor_cache
export TRITON_CACHE_DIR=$REPO/outputs/triton_cache TORCHINDUCTOR_CACHE_DIR=$REPO/outputs/inductor_cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/device.txt"
SUMMARY="$OUT/gpu_check_summary.txt"
: > "$SUMMARY"
STATUS=0
# section NAME CMD...: runs CMD, records its exit status and seconds in the summary table.
section() {
  local name=$1; shift
  local t0=$SECONDS
  "$@"; local rc=$?
  [ $rc -ne 0 ] && STATUS=1
  printf '%-28s exit %-3s %6ss\n' "$name" "$rc" "$((SECONDS - t0))" >> "$SUMMARY"
}
gpu_tests() {  # gpu_tests NAME [-k EXPR] FILE...: the GPU-marked tests of the given files (those EXPR selects)
  local name=$1; shift
  local kexpr=()
  if [ "$1" = -k ]; then kexpr=(-k "$2"); shift 2; fi
  local files=$(grep -l "mark\.gpu" "$@" 2>/dev/null | tr '\n' ' ')
  [ -z "$files" ] && return 0
  (cd /tmp && python3 -m pytest -q -m gpu "${kexpr[@]}" ${GPU_TESTS:-$files} -p no:cacheprovider --durations=0 --durations-min=1 ${PYTEST_ARGS:-}) 2>&1 \
    | tee "$OUT/gpu_tests_$name.log" | grep -v "^[0-9.]*s \(call\|setup\|teardown\) " | tail -n 15
  return ${PIPESTATUS[0]}
}
logged() {  # logged LOG TAIL CMD...: CMD from /tmp, full log in $OUT/LOG, its last TAIL lines shown
  local log=$1 n=$2; shift 2
  (cd /tmp && "$@") 2>&1 | tee "$OUT/$log" | tail -n "$n"
  return ${PIPESTATUS[0]}
}
deepspeed_smoke() {
  # liveditor-train under each DeepSpeed strategy on random latent shards (tiny model, ISA at block 64), a
  # resume from the ZeRO checkpoint, and liveditor-export of it into a file the editor loader reads.
  local rc=0
  python3 -c "import deepspeed" 2>/dev/null || { echo "deepspeed: not installed (carry its wheel in .whl/)"; return 1; }
  (cd /tmp && python3 -m liveditor.train.bench --write-synthetic-shards /tmp/ds_shards >/dev/null)
  for s in ${DEEPSPEED_STRATEGIES:-deepspeed_stage_2 deepspeed_stage_3 deepspeed_stage_2_offload}; do
    run=/tmp/ds_runs/$s; rm -rf "$run"
    common="experiment=tiny isa=paper data.shards=/tmp/ds_shards run_dir=$run strategy=$s trainer.accelerator=gpu trainer.precision=bf16-mixed data.batch_size=1 callbacks.checkpoint.every_n_steps=3"
    (cd /tmp && python3 -m liveditor.train.cli $common trainer.max_steps=3 > "$OUT/ds_$s.log" 2>&1 \
      && python3 -m liveditor.train.cli $common trainer.max_steps=6 >> "$OUT/ds_$s.log" 2>&1 \
      && python3 -m liveditor.train.export "$run/checkpoints/last.ckpt" "$run/export.safetensors" >> "$OUT/ds_$s.log" 2>&1 \
      && python3 -c "import sys, json; from liveditor.models import build_editor; from liveditor.train.bench import model_config; m, r = build_editor(model_config('tiny'), sys.argv[1]); print('export loads:', r.layout, json.load(open(sys.argv[1] + '.json'))['global_step'])" "$run/export.safetensors" >> "$OUT/ds_$s.log" 2>&1)
    local r=$?; [ $r -ne 0 ] && rc=1
    echo "$s: exit $r ($(grep -c '"step"' $run/samples.rank0.jsonl 2>/dev/null) step records; $(grep -o 'export loads: .*' "$OUT/ds_$s.log"))"
  done 2>&1 | tee "$OUT/deepspeed.log"
  return $rc
}
learn_run() {
  # Train an editor from scratch with ISA and one with dense attention, score both on held-out clips (docs/learning.md).
  # LEARN_TIMEOUT (s) stops it inside a device call's limit; a rerun resumes (finished stages are reused).
  (cd /tmp && timeout "${LEARN_TIMEOUT:-540}" python3 -m liveditor.cli learn --scale gpu --out "$REPO/outputs/learn-gpu" ${LEARN_ARGS:-}) 2>&1 \
    | tr '\r' '\n' | grep -v "it/s\]$\|step/s\]$\|eval/s\]$" | tee "$OUT/learn.log" | tail -n 40
  local rc=${PIPESTATUS[0]}
  L="$REPO/outputs/learn-gpu"
  for f in report.html report.md summary.json curves.csv; do cp "$L/eval/report/$f" "$OUT/learn_$f" 2>/dev/null; done
  for a in isa dense; do cp "$L/train-$a/run/samples.rank0.jsonl" "$OUT/learn_samples_$a.jsonl" 2>/dev/null; done
  return $rc
}

# kernels-fwd and kernels-bwd split the GPU tests of every tests/test_isa_*.py but the release kernels' (kernels-release).
ISA_TESTS=(); for f in "$REPO"/tests/test_isa_*.py; do [ "${f##*/}" != test_isa_release_triton.py ] && ISA_TESTS+=("$f"); done
if runs kernels-fwd; then
  [ "${SKIP_TESTS:-0}" != "1" ] && section "kernels-fwd: gpu tests" gpu_tests kernels_fwd -k "not backward and not inductor and not gluon" "${ISA_TESTS[@]}"
fi
if runs kernels-bwd; then
  [ "${SKIP_TESTS:-0}" != "1" ] && section "kernels-bwd: gpu tests" gpu_tests kernels_bwd -k "backward or inductor or gluon" "${ISA_TESTS[@]}"
fi
if runs kernels-release; then
  [ "${TIMELINE:-0}" = "1" ] && section timeline logged timeline.log 20 python3 -m liveditor.kernels.bench --timeline --trace-dir "$OUT"
  [ "${SKIP_TESTS:-0}" != "1" ] && section "kernels-release: gpu tests" gpu_tests kernels_release "$REPO"/tests/test_isa_release_triton.py
  [ "${SKIP_BENCH:-0}" != "1" ] && section "kernels-release: ISA bench" logged bench.log 40 python3 -m liveditor.kernels.bench --json "$OUT/bench.json" "$@"
  [ "${SKIP_BENCH:-0}" != "1" ] && section "kernels-release: selection" logged select_bench.log 10 python3 -m liveditor.kernels.bench --selection
fi
if runs model; then
  [ "${SKIP_TESTS:-0}" != "1" ] && section "model: gpu tests" gpu_tests model "$REPO"/tests/test_model_*.py "$REPO"/tests/test_edit*.py "$REPO"/tests/test_pipeline*.py
  if [ "${DIT_BENCH:-1}" = "1" ]; then  # eager, then each block's non-attention work compiled (model.dit.compile=true)
    section "model: DiT bench eager" logged dit_bench.log 6 python3 -m liveditor.models.bench --json "$OUT/dit_bench.json"
    section "model: DiT bench compiled" logged dit_bench_compiled.log 6 python3 -m liveditor.models.bench --compile inductor --json "$OUT/dit_bench_compiled.json"
  fi
  # A whole edit at Wan2.1-1.3B size, 832x480x81, 32 UniPC steps, CFG 2.5, real-size random VAE and umT5.
  [ "${EDIT_BENCH:-0}" = "1" ] && section "model: edit bench" logged edit_bench.log 12 python3 -m liveditor.pipeline.bench --json "$OUT/edit_bench.json" ${EDIT_BENCH_ARGS:-}
  # Scoring throughput with real-size random CLIP-L/14, DINOv2-base and PickScore on 81-frame videos.
  [ "${EVAL_BENCH:-0}" = "1" ] && section "model: eval bench" logged eval_bench.log 8 python3 -m liveditor.eval.bench --json "$OUT/eval_bench.json" ${EVAL_BENCH_ARGS:-}
fi
if runs train; then
  [ "${SKIP_TESTS:-0}" != "1" ] && section "train: gpu tests" gpu_tests train "$REPO"/tests/test_train_*.py
  # A training step at Wan2.1-1.3B size, 832x480x81 in context: ISA against dense, eager and compiled (train/bench.py).
  [ "${TRAIN_BENCH:-1}" = "1" ] && section "train: step bench" logged train_bench.log 8 python3 -m liveditor.train.bench --compile both --json "$OUT/train_bench.json" ${TRAIN_BENCH_ARGS:-}
fi
if runs deepspeed; then
  section "deepspeed: smoke runs" deepspeed_smoke
fi
if runs learn; then
  section "learn: gpu scale" learn_run
fi
echo "== gpu_check PART=$PART on $(head -n 1 "$OUT/device.txt"), commit $(tail -n 1 "$OUT/device.txt")"
cat "$SUMMARY"
exit $STATUS
