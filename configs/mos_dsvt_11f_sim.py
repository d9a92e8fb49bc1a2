# Moving-object segmentation (current + 10 past scans at 0.1 m) on the 4D voxel transformer. Everything but the
# backbone (data, geometry, encoder, head, losses, schedule) is mos_sparseunet_11f_sim.py's, inherited, so a
# side-by-side training compares the backbones only. Windows of 16/24 cells cover the same 1.6/2.4 m as the flow
# config's 8/12 cells at 0.2 m; time_mode "window" puts all 11 scans of an x-y tile in one window.
_base_ = ["./mos_sparseunet_11f_sim.py"]

model = dict(backbone=dict(_delete_=True, type="VoxelTransformer4D", channels=(16, 32, 64, 64), depths=(1, 1, 2, 2),
                           head_dim=16, set_size=32, window_shapes=((16, 16), (24, 24)), time_mode="window",
                           time_window=3, pool_stride=(2, 2, 2), ffn_ratio=4.0))
