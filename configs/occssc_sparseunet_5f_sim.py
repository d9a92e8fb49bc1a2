# Semantic occupancy on the SemanticKITTI-SSC-style grid (0.2 m, 256 x 256 x 32 in front of the car) from 5 sweeps.
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
occupancy_grid = dict(point_range=(0.0, -25.6, -2.0, 51.2, 25.6, 4.4), voxel_size=(0.2, 0.2, 0.2))
model = dict(heads=dict(_delete_=True, occupancy=dict(type="OccupancyHead", grid=occupancy_grid, coarse_factor=4,
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
