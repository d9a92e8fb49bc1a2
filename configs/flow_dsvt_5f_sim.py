# Scene flow on the 4D voxel transformer (VoxelTransformer4D, 0.64 M parameters, widths 16-32-64-64 like the
# sparse U-Net). Everything else (data, geometry, encoder, head, losses, schedule) is flow_sparseunet_5f_sim.py's,
# inherited, so a side-by-side training compares the backbones only. Windows in cells of each level (0.2 m at
# level 0); time_mode "window" (all 5 sweeps in a window) or "axis" (windows of time_window sweeps).
_base_ = ["./flow_sparseunet_5f_sim.py"]

model = dict(backbone=dict(_delete_=True, type="VoxelTransformer4D", channels=(16, 32, 64, 64), depths=(1, 1, 2, 2),
                           head_dim=16, set_size=32, window_shapes=((8, 8), (12, 12)), time_mode="window",
                           time_window=2, pool_stride=(2, 2, 2), ffn_ratio=4.0))
