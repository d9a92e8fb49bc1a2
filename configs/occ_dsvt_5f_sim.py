# Semantic occupancy from 5 sweeps on the 4D voxel transformer (the backbone of flow_dsvt_5f_sim.py). Everything
# but the backbone (grids, data, encoder, head, losses, schedule) is occ_sparseunet_5f_sim.py's, inherited, so a
# side-by-side training compares the backbones only.
_base_ = ["./occ_sparseunet_5f_sim.py"]

model = dict(backbone=dict(_delete_=True, type="VoxelTransformer4D", channels=(16, 32, 64, 64), depths=(1, 1, 2, 2),
                           head_dim=16, set_size=32, window_shapes=((8, 8), (12, 12)), time_mode="window",
                           time_window=2, pool_stride=(2, 2, 2), ffn_ratio=4.0))
