# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:segmentation/configs/RALA/RALA_Uper_s_2x.py
# (mmseg 0.x form, with its _base_ files: models/RALA_upper.py, datasets/ade20k_uper.py, schedules/schedule_160k.py)
# remaining differences: mmseg 1.x config form only
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# RAVLT-S UperNet, ADE20K 160k: 50.7 mIoU (RALA README (qhfan/RALA))
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='ravlt_small',
        drop_path_rate=0.15,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_S.pth')),
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150),
    test_cfg=dict(mode='whole'))
# 8 GPUs x 2 images; AdamW lr 6e-5 wd 0.01, no decay on norms and position tables (official keys), 1500 warm-up
# iterations from 1e-6, poly (power 1) over 160k (the base schedule)
train_dataloader = dict(batch_size=2)
# AMP: the official config enables it ("AMP (faster but may meet nan loss)": Fp16OptimizerHook, static loss scale
# 512; its fp32 alternative is commented out). This RALA keeps its linear attention in float32 under autocast, which
# removes the overflow behind those NaNs (see visionattn.models.ravlt); fp32 on CPU (visionattn.mm.runner.load_config)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={'absolute_pos_embed': no_decay, 'relative_position_bias_table': no_decay, 'norm': no_decay}))
