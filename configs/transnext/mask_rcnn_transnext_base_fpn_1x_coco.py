# TransNeXt-Base Mask R-CNN 1x, COCO: 51.7 box AP, 45.9 mask AP (TransNeXt detection/maskrcnn/README.md).
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:detection/maskrcnn/configs/mask_rcnn_transnext_base_fpn_1x_coco.py
# (mmdet 2.x), with _base_/models/mask_rcnn_transnext_fpn.py, _base_/schedules/schedule_1x.py and the mm backbone
# detection/maskrcnn/transnext_native.py (drop path 0.7).
# Remaining differences: mmdet 3.x config form only (data preprocessor instead of Normalize/Pad; the schedule's
# 500-iteration linear warm-up ratio 0.001 and steps at epochs 8 and 11 are the same).
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
model = dict(
    backbone=dict(
        arch='transnext_base',
        drop_path_rate=0.7,
        img_size=800,  # position tables built for 800, coordinates scaled by the 224 pre-training
        pretrain_size=224,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
# 8 GPUs x 2 images; AdamW lr 1e-4 wd 0.05; no weight decay on query embeddings, local position biases, the CPB MLPs,
# temperatures and norms (the official custom keys, replacing the base's); no gradient clipping
train_dataloader = dict(batch_size=2)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    type='AmpOptimWrapper',  # see below
    loss_scale=512.,
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            'query_embedding': no_decay,
            'relative_pos_bias_local': no_decay,
            'cpb': no_decay,
            'temperature': no_decay,
            'norm': no_decay,
        }))
# the official base run trained in fp16 (fp16 = dict(loss_scale=512.), mmdet 2.x Fp16OptimizerHook): mmengine's
# AmpOptimWrapper with the same static loss scale (without CUDA, tools/train.py trains in fp32 with a logged note:
# visionattn.mm.runner.amp_to_fp32)
