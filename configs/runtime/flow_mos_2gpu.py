# The two trained networks shipped with the package: scene flow (5 sweeps, 0.2 m) on cuda:0 and
# moving-object segmentation (11 scans, 0.1 m) on cuda:1, with the receding-horizon fused MOS.
_ckpt = "{{ fileDirname }}/../../perception4d/checkpoints"
model_sets = [
    dict(name="flow", config=None, checkpoint=_ckpt + "/flow_sparseunet_5f_sim.pth", device="cuda:0"),
    dict(name="mos", config=None, checkpoint=_ckpt + "/mos_sparseunet_11f_sim.pth", device="cuda:1"),
]
workers = "process"  # processes win on two GPUs (docs/benchmarks.md, Parallel perception)
group = "device"
amp = None
mos_fusion = True
max_gap_s = 0.25
max_in_flight = 2
