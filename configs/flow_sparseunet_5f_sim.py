# Scene flow trained and validated on simulator sequences (64-beam KITTI-like sensor).
_base_ = ["./_base_/flow_sparseunet.py"]

_geometry = {{_base_.geometry}}
train_dataloader = dict(dataset=dict(type="SimFlowDataset", geometry=_geometry, seeds=(0, 1, 2, 3),
                                     frames_per_sequence=12, preset="hdl64e"))
val_dataloader = dict(dataset=dict(type="SimFlowDataset", geometry=_geometry, seeds=(1000,),
                                   frames_per_sequence=6, preset="hdl64e"))
test_dataloader = val_dataloader
