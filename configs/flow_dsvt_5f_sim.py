# Scene flow on the 4D voxel transformer (VoxelTransformer4D, 0.64 M parameters, widths 16-32-64-64 like the
# sparse U-Net); data, head and schedule as flow_sparseunet_5f_sim.py. Windows in cells of each level (0.2 m at
# level 0); time_mode "window" (all 5 sweeps in a window) or "axis" (windows of time_window sweeps).
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
model = dict(backbone=dict(_delete_=True, type="VoxelTransformer4D", channels=(16, 32, 64, 64), depths=(1, 1, 2, 2),
                           head_dim=16, set_size=32, window_shapes=((8, 8), (12, 12)), time_mode="window",
                           time_window=2, pool_stride=(2, 2, 2), ffn_ratio=4.0))
train_dataloader = dict(batch_size=4,
                        dataset=dict(type="SimWindowDataset", geometry=_geometry, seeds=list(range(16)),
                                     frames_per_sequence=12, preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=_geometry, seeds=(1000,),
                                   frames_per_sequence=6, preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
test_dataloader = val_dataloader
