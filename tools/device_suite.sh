#!/usr/bin/env bash
# GPU checks, trainings and benchmarks on a CUDA machine (python3 with torch; spconv/mmengine from the device bundle).
#
# Usage: [TESTS=1] [TEST_PATHS="tests/models tests/ops"] [TRAIN="CONFIG@ITERS@GPU ..."] [TRAIN_LIMIT_S=420]
#        [EVAL_SEEDS=2024,2025] [EVAL_FRAMES=8] [TRAIN_OPTS="extra --cfg-options"] [BENCH="voxelize flow mos occupancy occssc"] [EXTRA="shell command"] [DDP=1]
#        tools/device_suite.sh OUT_DIR
#   1. TESTS=1 (bg: alongside step 2): the GPU tests of TEST_PATHS                                  -> logs/gpu_tests.log
#   2. TRAIN: each CONFIG trained for ITERS iterations on GPU index GPU, all of them at once (one job a GPU),
#      then evaluated on the unseen simulator seeds EVAL_SEEDS and published -> ckpt/<stem>.{pth,py,log,scalars.json},
#                                                                              logs/<stem>.eval.json
#   3. BENCH: tools/benchmark.py B --device cuda (occssc: the occupancy benchmark on the SSC-grid config)
#                                                                           -> logs/bench_B_cuda.md, logs/profile_B.txt
#   4. EXTRA: any further command (e.g. a parallel-path benchmark)          -> logs/extra.log
#   5. DDP=1 and >= 2 GPUs: a short torchrun DDP training run               -> logs/ddp_train.log
# Everything is packed into OUT/logs.tar.gz and OUT/ckpt.tar.gz (the device returns at most 8 files).
set -uo pipefail
out=${1:?OUT_DIR}; limit=${TRAIN_LIMIT_S:-420}; seeds=${EVAL_SEEDS:-2024,2025}; eval_frames=${EVAL_FRAMES:-8}
logs=/tmp/suite_logs; ckpts=/tmp/suite_ckpt
rm -rf $logs $ckpts; mkdir -p "$out" $logs $ckpts
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 || echo "pip install -e failed"
python3 -c "import torch, spconv, perception4d.ops; print('torch', torch.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))"

pack() {
  tar czf "$out/logs.tar.gz" -C $logs . 2>/dev/null
  [ -n "$(ls -A $ckpts)" ] && tar czf "$out/ckpt.tar.gz" -C $ckpts .
}
trap pack EXIT

run_tests() {
  # shellcheck disable=SC2086
  timeout "${TESTS_LIMIT_S:-480}" python3 -m pytest -q -p no:cacheprovider -rs ${TEST_PATHS:-tests/models tests/ops} > $logs/gpu_tests_full.log 2>&1
  tail -25 $logs/gpu_tests_full.log > $logs/gpu_tests.log
}
tests_pid=
if [ "${TESTS:-1}" = 1 ]; then run_tests; cat $logs/gpu_tests.log
elif [ "${TESTS:-1}" = bg ]; then run_tests & tests_pid=$!  # alongside the trainings (correctness only)
fi

train_one() {  # CONFIG ITERS GPU
  local config=$1 iters=$2 gpu=$3 name work
  name=$(basename "$config" .py); work=/tmp/work_$name
  CUDA_VISIBLE_DEVICES=$gpu timeout "$limit" python3 tools/train.py "$config" --work-dir "$work" \
    --cfg-options train_cfg.max_iters="$iters" train_cfg.val_interval="$iters" \
    default_hooks.checkpoint.interval=250 train_dataloader.num_workers=6 \
    train_dataloader.persistent_workers=True param_scheduler.1.T_max=$((iters - 100)) ${TRAIN_OPTS:-} \
    > "$logs/$name.train_stdout.txt" 2>&1
  echo "$name: train exit $?" >> $logs/summary.txt
  local ckpt cfg
  ckpt=$(cat "$work/last_checkpoint" 2>/dev/null) || { echo "$name: no checkpoint" >> $logs/summary.txt; return; }
  cfg=$(ls "$work"/*/config.py | head -1)
  python3 tools/publish_checkpoint.py "$ckpt" "$ckpts/$name.pth" --config "$cfg" >> $logs/summary.txt 2>&1
  cp "$(ls "$work"/*/*.log | head -1)" "$ckpts/$name.log"
  cp "$(ls "$work"/*/vis_data/scalars.json | head -1)" "$ckpts/$name.scalars.json" 2>/dev/null
  CUDA_VISIBLE_DEVICES=$gpu timeout "${EVAL_LIMIT_S:-150}" python3 tools/test.py "$ckpts/$name.py" "$ckpts/$name.pth" \
    --work-dir "/tmp/eval_$name" --out-json "$logs/$name.eval.json" \
    --cfg-options "test_dataloader.dataset.seeds=[$seeds]" test_dataloader.dataset.frames_per_sequence="$eval_frames" \
    > "$logs/$name.eval_stdout.txt" 2>&1
  echo "$name: eval exit $?" >> $logs/summary.txt
}

if [ -n "${TRAIN:-}" ]; then
  train_pids=()
  for job in $TRAIN; do
    IFS=@ read -r config iters gpu <<< "$job"
    train_one "$config" "$iters" "${gpu:-0}" & train_pids+=("$!")
  done
  wait "${train_pids[@]}"  # the trainings only: a background test run is waited for (and reported) below
  cat $logs/summary.txt
  for f in $logs/*.eval.json; do [ -f "$f" ] && { echo "== $f"; cat "$f"; }; done
  for f in $logs/*.train_stdout.txt; do echo "== $f"; grep -v -i warn "$f" | grep -E "Iter\(train\)|Error|error" | tail -4; done
fi

[ -n "$tests_pid" ] && { wait "$tests_pid"; cat $logs/gpu_tests.log; }

for b in ${BENCH-}; do
  case $b in
    voxelize) python3 tools/benchmark.py voxelize --device cuda --repeats 50 2>&1 | grep -v Warning \
                | tee $logs/bench_voxelize_cuda.md ;;
    occssc) python3 tools/benchmark.py occupancy --config configs/occssc_sparseunet_5f_sim.py --device cuda \
              --repeats 30 --precision fp32,fp16,fp16+fused 2>&1 | grep -v -i warn | tail -12 | tee $logs/bench_occssc_cuda.md ;;
    *) python3 tools/benchmark.py "$b" --device cuda --repeats 30 --profile "$logs/profile_$b.txt" 2>&1 \
         | grep -v -i warn | tail -14 | tee "$logs/bench_${b}_cuda.md" ;;
  esac
done

if [ -n "${EXTRA:-}" ]; then
  bash -c "$EXTRA" 2>&1 | grep -v -i warn | tee $logs/extra.log
fi

if [ "${DDP:-0}" = 1 ] && [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 240 torchrun --nproc_per_node 2 tools/train.py configs/flow_sparseunet_5f_sim.py \
    --work-dir /tmp/work_ddp --launcher pytorch --cfg-options train_cfg.max_iters=40 train_cfg.val_interval=40 \
    "train_dataloader.dataset.seeds=[0,1]" train_dataloader.dataset.frames_per_sequence=6 \
    "val_dataloader.dataset.seeds=[1000]" val_dataloader.dataset.frames_per_sequence=3 \
    train_dataloader.num_workers=4 default_hooks.logger.interval=10 param_scheduler=None \
    > /tmp/ddp_stdout.txt 2>&1
  echo "ddp exit $?"
  grep -v -i warn /tmp/ddp_stdout.txt | grep -E "world_size|Distributed|Iter\(|Error|error" | head -30 \
    | tee $logs/ddp_train.log
fi
