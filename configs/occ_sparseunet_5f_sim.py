# Semantic occupancy on the Occ3D-style grid from 5 sweeps on the flow backbone, simulator sequences.
# Both grids are in the reference ego frame (ground at z = 0): the backbone sees -2.2..4.2 m at 0.2 m,
# the occupancy grid spans -1..5.4 m at 0.4 m (200 x 200 x 16); the head completes what lies above the backbone.
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
occupancy_grid = dict(point_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), voxel_size=(0.4, 0.4, 0.4))
model = dict(heads=dict(_delete_=True, occupancy=dict(type="OccupancyHead", grid=occupancy_grid, coarse_factor=2,
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
