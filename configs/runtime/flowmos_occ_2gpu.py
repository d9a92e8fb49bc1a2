# The parallel perception path of the runtime: the flow+MOS network on cuda:0, the occupancy network on cuda:1.
# The occupancy network is the shipped checkpoint (trained by tools/train.py); the flow+MOS network has no trained
# weights yet and starts from a random init (timing only; the runtime says so loudly).
# With one GPU both run on cuda:0 (one upload per sweep), without CUDA on the CPU; results are the same.
model_sets = [
    dict(name="flowmos", config="{{ fileDirname }}/../flowmos_sparseunet_5f_sim.py", checkpoint=None,
         device="cuda:0"),
    dict(name="occupancy", checkpoint="{{ fileDirname }}/../../perception4d/checkpoints/occ_sparseunet_5f_sim.pth",
         device="cuda:1"),
]
workers = "process"  # inline | thread | process: processes win on two GPUs (docs/benchmarks.md, Parallel perception)
group = "device"
amp = None  # fp16 autocast on CUDA
mos_fusion = False
max_gap_s = 0.25
max_in_flight = 2
