# Semantic occupancy from 5 sweeps on the 4D voxel transformer; grids, head, data and schedule as
# occ_sparseunet_5f_sim.py (the backbone is the one of flow_dsvt_5f_sim.py).
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
occupancy_grid = dict(point_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), voxel_size=(0.4, 0.4, 0.4))
model = dict(backbone=dict(_delete_=True, type="VoxelTransformer4D", channels=(16, 32, 64, 64), depths=(1, 1, 2, 2),
                           head_dim=16, set_size=32, window_shapes=((8, 8), (12, 12)), time_mode="window",
                           time_window=2, pool_stride=(2, 2, 2), ffn_ratio=4.0),
             heads=dict(_delete_=True, occupancy=dict(type="OccupancyHead", grid=occupancy_grid, coarse_factor=2,
                                                      channels=(32, 64, 64), lovasz_weight=1.0,
                                                      velocity_weight=0.5)))
train_dataloader = dict(batch_size=2,
                        dataset=dict(type="SimWindowDataset", geometry=_geometry, tasks=("occupancy",),
                                     occupancy_grid=occupancy_grid, seeds=list(range(8)), frames_per_sequence=12,
                                     preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=_geometry, tasks=("occupancy",),
                                   occupancy_grid=occupancy_grid, seeds=(1000,), frames_per_sequence=6,
                                   preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type="OccupancyMetric")
test_evaluator = val_evaluator
