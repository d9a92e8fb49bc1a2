# Moving-object segmentation (current + 10 past scans at 0.1 m) on the 4D voxel transformer; data, head and
# schedule as mos_sparseunet_11f_sim.py. Windows of 16/24 cells cover the same 1.6/2.4 m as the flow config's 8/12
# cells at 0.2 m; time_mode "window" puts all 11 scans of an x-y tile in one window.
_base_ = ["./_base_/sparseunet.py"]

geometry = dict(point_range=(-51.2, -51.2, -2.4, 51.2, 51.2, 4.0), voxel_size=(0.1, 0.1, 0.1), num_frames=11)
model = dict(data_preprocessor=dict(geometry=geometry),
             backbone=dict(_delete_=True, type="VoxelTransformer4D", channels=(16, 32, 64, 64), depths=(1, 1, 2, 2),
                           head_dim=16, set_size=32, window_shapes=((16, 16), (24, 24)), time_mode="window",
                           time_window=3, pool_stride=(2, 2, 2), ffn_ratio=4.0),
             heads=dict(_delete_=True, mos=dict(type="MosHead", hidden_channels=32, moving_weight=4.0)))
train_dataloader = dict(batch_size=2,
                        dataset=dict(type="SimWindowDataset", geometry=geometry, tasks=("mos",),
                                     seeds=list(range(8)), frames_per_sequence=16, preset=("hdl64e", "vlp32c_x2"),
                                     terrain="urban"))
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=geometry, tasks=("mos",), seeds=(1000,),
                                   frames_per_sequence=12, preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type="MosMetric")
test_evaluator = val_evaluator
