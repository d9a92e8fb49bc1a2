# The 4D sparse U-Net: geometry, model, schedule and runtime shared by every run (scene flow by default).
default_scope = "perception4d"

# Declared once; the grid (512 x 512 x 32 x 5) is derived and checked at start-up.
geometry = dict(point_range=(-51.2, -51.2, -2.2, 51.2, 51.2, 4.2), voxel_size=(0.2, 0.2, 0.2), num_frames=5)

model = dict(
    type="Perception4DNet",
    data_preprocessor=dict(type="WindowDataPreprocessor", geometry=geometry),
    encoder=dict(out_channels=16, hidden_channels=32, extra_features=1),
    backbone=dict(type="SparseUNet4D", channels=(16, 32, 64, 64), blocks_per_level=1),
    heads=dict(flow=dict(type="FlowHead", hidden_channels=32, speed_edges=(0.4, 1.0))),
)

train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type="InfiniteSampler", shuffle=True), collate_fn=dict(type="pseudo_collate"))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type="DefaultSampler", shuffle=False), collate_fn=dict(type="pseudo_collate"))
test_dataloader = val_dataloader
val_evaluator = dict(type="Av2FlowMetric")
test_evaluator = val_evaluator

train_cfg = dict(type="IterBasedTrainLoop", max_iters=2000, val_interval=500)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=100),
                   dict(type="CosineAnnealingLR", by_epoch=False, begin=100, T_max=1900, eta_min=1e-5)]

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=20),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=500, max_keep_ckpts=2, save_last=True),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
custom_hooks = [dict(type="RunInfoHook")]
log_processor = dict(by_epoch=False, window_size=20)
visualizer = dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")])
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl"))
randomness = dict(seed=0)
log_level = "INFO"
load_from = None
resume = False
