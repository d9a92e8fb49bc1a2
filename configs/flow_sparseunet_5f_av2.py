# Scene flow on Argoverse 2 sensor logs with flow labels (set data_root with --cfg-options).
_base_ = ["./_base_/sparseunet.py"]

_geometry = {{_base_.geometry}}
data_root = "data/argoverse2/sensor"
train_dataloader = dict(dataset=dict(type="ReaderWindowDataset", geometry=_geometry, data_root=data_root + "/train",
                                     format="av2"))
val_dataloader = dict(dataset=dict(type="ReaderWindowDataset", geometry=_geometry, data_root=data_root + "/val",
                                   format="av2"))
test_dataloader = val_dataloader
