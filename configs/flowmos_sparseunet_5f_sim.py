# Scene flow and moving-object segmentation on one shared backbone (the flow geometry), simulator sequences.
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
# Geometry and time only, like the single-task flow and MOS configs: intensity was a simulator shortcut for motion.
model = dict(encoder=dict(extra_features=0),
             heads=dict(mos=dict(type="MosHead", hidden_channels=32, moving_weight=4.0)))
train_dataloader = dict(batch_size=4,
                        dataset=dict(type="SimWindowDataset", geometry=_geometry, tasks=("flow", "mos"),
                                     seeds=list(range(16)), frames_per_sequence=12, preset=("hdl64e", "vlp32c_x2"),
                                     terrain="urban"))
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=_geometry, tasks=("flow", "mos"),
                                   seeds=(1000,), frames_per_sequence=6, preset=("hdl64e", "vlp32c_x2"),
                                   terrain="urban"))
test_dataloader = val_dataloader
val_evaluator = [dict(type="Av2FlowMetric"), dict(type="MosMetric")]
test_evaluator = val_evaluator
