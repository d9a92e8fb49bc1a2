# Scene flow trained and validated on simulator sequences: KITTI-like 64-beam and AV2-like 2x32-beam sensors.
# The shipped checkpoint perception4d/checkpoints/flow_sparseunet_5f_sim.pth was trained with this file.
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
# Geometry and time only: the simulator's intensities are a shortcut that does not transfer to real sensors.
model = dict(encoder=dict(extra_features=0))
train_dataloader = dict(batch_size=4,
                        dataset=dict(type="SimWindowDataset", geometry=_geometry, seeds=list(range(16)),
                                     frames_per_sequence=12, preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
val_dataloader = dict(dataset=dict(type="SimWindowDataset", geometry=_geometry, seeds=(1000,),
                                   frames_per_sequence=6, preset=("hdl64e", "vlp32c_x2"), terrain="urban"))
test_dataloader = val_dataloader
