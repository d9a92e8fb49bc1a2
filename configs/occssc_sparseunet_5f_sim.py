# Semantic occupancy on the SemanticKITTI-SSC-style grid (0.2 m, 256 x 256 x 32 in front of the car) from 5 sweeps.
# Everything but the grid and the decoder's coarse factor (data, encoder, backbone, losses, schedule) is
# occ_sparseunet_5f_sim.py's, inherited.
_base_ = ["./occ_sparseunet_5f_sim.py"]

occupancy_grid = dict(point_range=(0.0, -25.6, -2.0, 51.2, 25.6, 4.4), voxel_size=(0.2, 0.2, 0.2))
model = dict(heads=dict(occupancy=dict(grid=occupancy_grid, coarse_factor=4)))
train_dataloader = dict(dataset=dict(occupancy_grid=occupancy_grid))
val_dataloader = dict(dataset=dict(occupancy_grid=occupancy_grid))
test_dataloader = val_dataloader
