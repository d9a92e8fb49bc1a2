#!/usr/bin/env bash
# GPU checks and benchmarks on a CUDA machine (python3 with torch; spconv/mmengine from the device bundle).
# Usage: [BENCH="voxelize flow" (empty: none)] [TESTS=1] [TRAIN_CONFIG=configs/flow_sparseunet_5f_sim.py TRAIN_ITERS=N TRAIN_LIMIT_S=380]
#        [DDP=1] tools/device_suite.sh OUT_DIR
#   1. GPU tests (every network layer fp32 / fp16 / autocast, backward)  -> OUT/gpu_tests.log
#   2. tools/benchmark.py B --device cuda for each B in BENCH (fp32, fp16, amp; profile)
#                                                       -> OUT/bench_B_cuda.md, OUT/profile_B.txt
#   3. TRAIN_ITERS>0: train TRAIN_CONFIG and publish its last checkpoint -> OUT/<config stem>.{pth,py,log,scalars.json}
#   5. DDP=1 and >= 2 GPUs: a short torchrun DDP training run                 -> OUT/ddp_train.log
set -uo pipefail
out=${1:?OUT_DIR}; iters=${TRAIN_ITERS:-0}; limit=${TRAIN_LIMIT_S:-380}
config=${TRAIN_CONFIG:-configs/flow_sparseunet_5f_sim.py}; name=$(basename "$config" .py)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 || echo "pip install -e failed"
python3 -c "import torch, spconv, perception4d.ops; print('torch', torch.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
[ "${TESTS:-1}" = 1 ] && python3 -m pytest -q -p no:cacheprovider tests/models tests/ops 2>&1 | tail -8 | tee "$out/gpu_tests.log"
for b in ${BENCH-voxelize flow}; do  # BENCH="" runs none
  if [ "$b" = voxelize ]; then
    python3 tools/benchmark.py voxelize --device cuda --repeats 50 2>&1 | grep -v Warning | tee "$out/bench_voxelize_cuda.md"
  else
    python3 tools/benchmark.py "$b" --device cuda --repeats 30 --profile "$out/profile_$b.txt" 2>&1 \
      | grep -v -i warn | tail -12 | tee "$out/bench_${b}_cuda.md"
  fi
done
if [ "$iters" -gt 0 ]; then
  work=/tmp/work_$name
  timeout "$limit" python3 tools/train.py "$config" --work-dir $work \
    --cfg-options train_cfg.max_iters=$iters train_cfg.val_interval=$iters \
    default_hooks.checkpoint.interval=250 train_dataloader.num_workers=8 \
    train_dataloader.persistent_workers=True param_scheduler.1.T_max=$((iters - 100)) \
    > "$out/train_stdout.txt" 2>&1
  echo "train exit $?"
  grep -v -i warn "$out/train_stdout.txt" | tail -25
  ckpt=$(cat $work/last_checkpoint)
  cfg=$(ls $work/*/config.py | head -1)
  python3 tools/publish_checkpoint.py "$ckpt" "$out/$name.pth" --config "$cfg"
  cp "$(ls $work/*/*.log | head -1)" "$out/$name.log"
  cp "$(ls $work/*/vis_data/scalars.json | head -1)" "$out/$name.scalars.json" 2>/dev/null
  rm -f "$out/train_stdout.txt"
fi
if [ "${DDP:-0}" = 1 ] && [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 240 torchrun --nproc_per_node 2 tools/train.py configs/flow_sparseunet_5f_sim.py \
    --work-dir /tmp/work_ddp --launcher pytorch --cfg-options train_cfg.max_iters=40 train_cfg.val_interval=40 \
    "train_dataloader.dataset.seeds=[0,1]" train_dataloader.dataset.frames_per_sequence=6 \
    "val_dataloader.dataset.seeds=[1000]" val_dataloader.dataset.frames_per_sequence=3 \
    train_dataloader.num_workers=4 default_hooks.logger.interval=10 param_scheduler=None \
    > /tmp/ddp_stdout.txt 2>&1
  echo "ddp exit $?"
  grep -v -i warn /tmp/ddp_stdout.txt | grep -E "world_size|Distributed|Iter\(|Error|error" | head -30 | tee "$out/ddp_train.log"
fi
