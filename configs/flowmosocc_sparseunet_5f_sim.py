# Scene flow, moving-object segmentation and semantic occupancy (Occ3D-style grid) on one shared backbone,
# 5 sweeps at 0.2 m, simulator sequences with occupancy ground truth.
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
occupancy_grid = dict(point_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), voxel_size=(0.4, 0.4, 0.4))
_tasks = ("flow", "mos", "occupancy")
model = dict(heads=dict(mos=dict(type="MosHead", hidden_channels=32, moving_weight=4.0),
                        occupancy=dict(type="OccupancyHead", grid=occupancy_grid, coarse_factor=2,
                                       channels=(32, 64, 64), lovasz_weight=1.0, velocity_weight=0.5)))
train_dataloader = dict(batch_size=2,
                        dataset=dict(type="SimWindowDataset", geometry=_geometry, tasks=_tasks,
                                     occupancy_grid=occupancy_grid, seeds=list(range(12)), frames_per_sequence=12,
                                     preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=_geometry, tasks=_tasks,
                                   occupancy_grid=occupancy_grid, seeds=(1000,), frames_per_sequence=6,
                                   preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
test_dataloader = val_dataloader
val_evaluator = [dict(type="Av2FlowMetric"), dict(type="MosMetric"), dict(type="OccupancyMetric")]
test_evaluator = val_evaluator
