# TransNeXt-Small Mask R-CNN 1x, COCO: 51.1 box AP, 45.5 mask AP (TransNeXt detection/maskrcnn/README.md).
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:detection/maskrcnn/configs/mask_rcnn_transnext_small_fpn_1x_coco.py
# (mmdet 2.x), with _base_/models/mask_rcnn_transnext_fpn.py, _base_/schedules/schedule_1x.py and the mm backbone
# detection/maskrcnn/transnext_native.py (drop path 0.6).
# Remaining differences: mmdet 3.x config form only (data preprocessor instead of Normalize/Pad; the schedule's
# 500-iteration linear warm-up ratio 0.001 and steps at epochs 8 and 11 are the same).
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
model = dict(
    backbone=dict(
        arch='transnext_small',
        drop_path_rate=0.6,
        img_size=800,  # position tables built for 800, coordinates scaled by the 224 pre-training
        pretrain_size=224,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth')),
    neck=dict(in_channels=[72, 144, 288, 576]))
# 8 GPUs x 2 images; AdamW lr 1e-4 wd 0.05; no weight decay on query embeddings, local position biases, the CPB MLPs,
# temperatures and norms (the official custom keys, replacing the base's); no gradient clipping
train_dataloader = dict(batch_size=2)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
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
