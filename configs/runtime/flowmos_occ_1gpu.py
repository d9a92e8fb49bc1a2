# The parallel perception pair on one GPU, run back to back in one worker (each sweep uploaded once):
# the sequential baseline of tools/benchmark.py parallel.
_base_ = ["./flowmos_occ_2gpu.py"]
model_sets = [
    dict(name="flowmos", config="{{ fileDirname }}/../flowmos_sparseunet_5f_sim.py", checkpoint=None,
         device="cuda:0"),
    dict(name="occupancy", checkpoint="{{ fileDirname }}/../../perception4d/checkpoints/occ_sparseunet_5f_sim.pth",
         device="cuda:0"),
]
workers = "inline"
