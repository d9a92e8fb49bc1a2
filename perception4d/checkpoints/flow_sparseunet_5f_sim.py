_geometry = dict(
    num_frames=5,
    point_range=(
        -51.2,
        -51.2,
        -2.2,
        51.2,
        51.2,
        4.2,
    ),
    voxel_size=(
        0.2,
        0.2,
        0.2,
    ))
custom_hooks = [
    dict(type='RunInfoHook'),
]
default_hooks = dict(
    checkpoint=dict(
        by_epoch=False,
        interval=250,
        max_keep_ckpts=2,
        save_last=True,
        type='CheckpointHook'),
    logger=dict(interval=20, type='LoggerHook'),
    param_scheduler=dict(type='ParamSchedulerHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    timer=dict(type='IterTimerHook'))
default_scope = 'perception4d'
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
geometry = dict(
    num_frames=5,
    point_range=(
        -51.2,
        -51.2,
        -2.2,
        51.2,
        51.2,
        4.2,
    ),
    voxel_size=(
        0.2,
        0.2,
        0.2,
    ))
launcher = 'none'
load_from = None
log_level = 'INFO'
log_processor = dict(by_epoch=False, window_size=20)
model = dict(
    backbone=dict(
        blocks_per_level=1, channels=(
            16,
            32,
            64,
            64,
        ), type='SparseUNet4D'),
    data_preprocessor=dict(
        geometry=dict(
            num_frames=5,
            point_range=(
                -51.2,
                -51.2,
                -2.2,
                51.2,
                51.2,
                4.2,
            ),
            voxel_size=(
                0.2,
                0.2,
                0.2,
            )),
        type='WindowDataPreprocessor'),
    encoder=dict(extra_features=0, hidden_channels=32, out_channels=16),
    heads=dict(
        flow=dict(
            hidden_channels=32, speed_edges=(
                0.4,
                1.0,
            ), type='FlowHead')),
    type='Perception4DNet')
optim_wrapper = dict(
    clip_grad=dict(max_norm=10.0),
    optimizer=dict(lr=0.002, type='AdamW', weight_decay=0.0001),
    type='OptimWrapper')
param_scheduler = [
    dict(begin=0, by_epoch=False, end=100, start_factor=0.1, type='LinearLR'),
    dict(
        T_max=1100,
        begin=100,
        by_epoch=False,
        eta_min=1e-05,
        type='CosineAnnealingLR'),
]
randomness = dict(seed=0)
resume = False
test_cfg = dict(type='TestLoop')
test_dataloader = dict(
    batch_size=1,
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        frames_per_sequence=6,
        geometry=dict(
            num_frames=5,
            point_range=(
                -51.2,
                -51.2,
                -2.2,
                51.2,
                51.2,
                4.2,
            ),
            voxel_size=(
                0.2,
                0.2,
                0.2,
            )),
        preset=(
            'hdl64e',
            'vlp32c_x2',
        ),
        seeds=(1000, ),
        terrain='urban',
        type='SimWindowDataset'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(shuffle=False, type='DefaultSampler'))
test_evaluator = dict(type='Av2FlowMetric')
train_cfg = dict(max_iters=1200, type='IterBasedTrainLoop', val_interval=1200)
train_dataloader = dict(
    batch_size=4,
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        frames_per_sequence=12,
        geometry=dict(
            num_frames=5,
            point_range=(
                -51.2,
                -51.2,
                -2.2,
                51.2,
                51.2,
                4.2,
            ),
            voxel_size=(
                0.2,
                0.2,
                0.2,
            )),
        preset=(
            'hdl64e',
            'vlp32c_x2',
        ),
        seeds=[
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            15,
        ],
        terrain='urban',
        type='SimWindowDataset'),
    num_workers=6,
    persistent_workers=True,
    sampler=dict(shuffle=True, type='InfiniteSampler'))
val_cfg = dict(type='ValLoop')
val_dataloader = dict(
    batch_size=1,
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        frames_per_sequence=6,
        geometry=dict(
            num_frames=5,
            point_range=(
                -51.2,
                -51.2,
                -2.2,
                51.2,
                51.2,
                4.2,
            ),
            voxel_size=(
                0.2,
                0.2,
                0.2,
            )),
        preset=(
            'hdl64e',
            'vlp32c_x2',
        ),
        seeds=(1000, ),
        terrain='urban',
        type='SimWindowDataset'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(shuffle=False, type='DefaultSampler'))
val_evaluator = dict(type='Av2FlowMetric')
visualizer = dict(
    type='Visualizer',
    vis_backends=[
        dict(type='LocalVisBackend'),
        dict(type='TensorboardVisBackend'),
    ])
work_dir = '/tmp/work_flow_sparseunet_5f_sim'
