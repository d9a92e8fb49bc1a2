# Moving-object segmentation: the current scan and 10 past scans at 0.1 m, trained on simulator sequences.
_base_ = ["./_base_/sparseunet.py"]

geometry = dict(point_range=(-51.2, -51.2, -2.4, 51.2, 51.2, 4.0), voxel_size=(0.1, 0.1, 0.1), num_frames=11)
# Geometry and time only (extra_features=0): with intensity as an input the network learned the simulator's
# reflectivity of moving objects as a cue and flagged a third of real SemanticKITTI static points as moving
# (docs/benchmarks.md); whether a point moves is a question of where it was, not of how bright it is.
model = dict(data_preprocessor=dict(geometry=geometry), encoder=dict(extra_features=0),
             heads=dict(_delete_=True, mos=dict(type="MosHead", hidden_channels=32, moving_weight=4.0)))
train_dataloader = dict(batch_size=2,
                        dataset=dict(type="SimWindowDataset", geometry=geometry, tasks=("mos",),
                                     seeds=list(range(8)), frames_per_sequence=16, preset=("hdl64e", "vlp32c_x2"),
                                     terrain="urban"))
# A variant with augment=dict(rotate=True, scale=(0.95, 1.05), z_shift=0.3, intensity_gain=(0.6, 1.4)) and
# short_window_prob=0.3 on the train dataset is measured in docs/benchmarks.md (not the shipped checkpoint).
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=geometry, tasks=("mos",), seeds=(1000,),
                                   frames_per_sequence=12, preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type="MosMetric")
test_evaluator = val_evaluator
