#!/usr/bin/env bash
# GPU check for an H100/H200 (no network): gpu tests, then benchmarks, then one short table.
#   bash scripts/gpu_check.sh [bench args...]
# Env: SKIP_TESTS=1, SKIP_BENCH=1, DIT_BENCH=0, TRAIN_BENCH=0 (training step ISA vs dense), DEEPSPEED=0 (ZeRO-2/3
# smoke runs of liveditor-train, resume and export; needs the deepspeed wheel in .whl/), EVAL_BENCH=1 (scoring
# throughput, eval/bench.py), EDIT_BENCH=1 (a whole edit, ISA vs dense; EDIT_BENCH_ARGS passes options), GPU_TESTS=paths,
# PYTEST_ARGS=..., TIMELINE=1 (one forward's kernels on the GPU's clock at each shape, traces in $OUT), LEARN=1 (the
# learning benchmark at GPU scale, `liveditor learn --scale gpu`: outputs/learn-gpu, reusing its finished stages; make
# its data here first with `--until codec` and carry outputs/learn-gpu; LEARN_ARGS passes options; report to $OUT).
# Carried wheels (in .whl/) are installed first when present. Full logs go to $OUT (or outputs/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# Import the repo without installing it: build a `liveditor` package view with the mapped subpackages.
python3 scripts/dev_path.py /tmp/liveditor_view >/dev/null && export PYTHONPATH=/tmp/liveditor_view:${PYTHONPATH:-}
REPO=$PWD
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/device.txt"
if [ "${TIMELINE:-0}" = "1" ]; then
  (cd /tmp && python3 -m liveditor.kernels.bench --timeline --trace-dir "$OUT") 2>&1 | tee "$OUT/timeline.log" | grep -E "^==|^span"
fi
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  # Every file with GPU tests (the device lacks some CPU-suite packages, so the whole folder would not collect).
  gpu_files=$(grep -l "mark\.gpu" "$REPO"/tests/test_*.py | tr '\n' ' ')
  (cd /tmp && python3 -m pytest -q -m gpu ${GPU_TESTS:-$gpu_files} -x -p no:cacheprovider ${PYTEST_ARGS:-}) 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15
fi
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  (cd /tmp && python3 -m liveditor.kernels.bench --json "$OUT/bench.json" "$@") 2>&1 | tee "$OUT/bench.log" | tail -n 40
fi
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  (cd /tmp && python3 -m liveditor.kernels.select) 2>&1 | tee "$OUT/select_bench.log" | tail -n 10
fi
if [ "${DIT_BENCH:-1}" = "1" ]; then
  # Eager, then with each block's non-attention work compiled (model.dit.compile=true).
  (cd /tmp && python3 -m liveditor.models.bench --json "$OUT/dit_bench.json") 2>&1 | tee "$OUT/dit_bench.log" | tail -n 6
  (cd /tmp && python3 -m liveditor.models.bench --compile inductor --json "$OUT/dit_bench_compiled.json") 2>&1 | tee "$OUT/dit_bench_compiled.log" | tail -n 6
fi
if [ "${TRAIN_BENCH:-1}" = "1" ]; then
  # A training step at Wan2.1-1.3B size, 832x480x81 in context: ISA against dense (train/bench.py).
  (cd /tmp && python3 -m liveditor.train.bench --json "$OUT/train_bench.json" ${TRAIN_BENCH_ARGS:-}) 2>&1 | tee "$OUT/train_bench.log" | tail -n 6
fi
if [ "${DEEPSPEED:-1}" = "1" ]; then
  # liveditor-train under each DeepSpeed strategy on random latent shards (tiny model, ISA at block 64), a
  # resume from the ZeRO checkpoint, and liveditor-export of it into a file the editor loader reads.
  (cd /tmp && python3 -m liveditor.train.bench --write-synthetic-shards /tmp/ds_shards >/dev/null
   for s in ${DEEPSPEED_STRATEGIES:-deepspeed_stage_2 deepspeed_stage_3 deepspeed_stage_2_offload}; do
     run=/tmp/ds_runs/$s; rm -rf "$run"
     common="experiment=tiny isa=paper data.shards=/tmp/ds_shards run_dir=$run strategy=$s trainer.accelerator=gpu trainer.precision=bf16-mixed data.batch_size=1 callbacks.checkpoint.every_n_steps=3"
     python3 -m liveditor.train.cli $common trainer.max_steps=3 > "$OUT/ds_$s.log" 2>&1 \
       && python3 -m liveditor.train.cli $common trainer.max_steps=6 >> "$OUT/ds_$s.log" 2>&1 \
       && python3 -m liveditor.train.export "$run/checkpoints/last.ckpt" "$run/export.safetensors" >> "$OUT/ds_$s.log" 2>&1 \
       && python3 -c "import sys, json; from liveditor.models import build_editor; from liveditor.train.bench import model_config; m, r = build_editor(model_config('tiny'), sys.argv[1]); print('export loads:', r.layout, json.load(open(sys.argv[1] + '.json'))['global_step'])" "$run/export.safetensors" >> "$OUT/ds_$s.log" 2>&1
     echo "$s: exit $? ($(grep -c '"step"' $run/samples.rank0.jsonl 2>/dev/null) step records; $(grep -o 'export loads: .*' "$OUT/ds_$s.log"))"
   done) 2>&1 | tee "$OUT/deepspeed.log"
fi
if [ "${EVAL_BENCH:-0}" = "1" ]; then
  # Scoring throughput with real-size random CLIP-L/14, DINOv2-base and PickScore on 81-frame videos.
  (cd /tmp && python3 -m liveditor.eval.bench --json "$OUT/eval_bench.json" ${EVAL_BENCH_ARGS:-}) 2>&1 | tee "$OUT/eval_bench.log" | tail -n 8
fi
if [ "${EDIT_BENCH:-0}" = "1" ]; then
  # A whole edit at Wan2.1-1.3B size, 832x480x81, 32 UniPC steps, CFG 2.5, real-size random VAE and umT5.
  (cd /tmp && python3 -m liveditor.pipeline.bench --json "$OUT/edit_bench.json" ${EDIT_BENCH_ARGS:-}) 2>&1 | tee "$OUT/edit_bench.log" | tail -n 12
fi
if [ "${LEARN:-0}" = "1" ]; then
  # Train an editor from scratch with ISA and one with dense attention, score both on held-out clips (docs/learning.md).
  # LEARN_TIMEOUT (s) stops it inside a device call's limit; a rerun resumes (finished stages are reused).
  (cd /tmp && timeout "${LEARN_TIMEOUT:-3000}" python3 -m liveditor.cli learn --scale gpu --out "$REPO/outputs/learn-gpu" ${LEARN_ARGS:-}) 2>&1 \
    | tr '\r' '\n' | grep -v "it/s\]$\|step/s\]$\|eval/s\]$" | tee "$OUT/learn.log" | tail -n 40
  L="$REPO/outputs/learn-gpu"
  for f in report.html report.md summary.json curves.csv; do cp "$L/eval/report/$f" "$OUT/learn_$f" 2>/dev/null; done
  for a in isa dense; do cp "$L/train-$a/run/samples.rank0.jsonl" "$OUT/learn_samples_$a.jsonl" 2>/dev/null; done
fi
