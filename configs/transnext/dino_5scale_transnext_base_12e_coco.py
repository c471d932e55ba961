_base_ = ['./dino_4scale_transnext_tiny_12e_coco.py']
# TransNeXt-Base DINO 5-scale 12 epochs, COCO: 57.1 box AP (TransNeXt README (DaiShiResearch/TransNeXt),
# detection/dino); all four backbone levels plus one from the neck; drop path 0.6 as its mm backbone; the recipe of
# the 4-scale tiny config
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:detection/dino/configs/dino-5scale_transnext_base-12e_coco.py
# Remaining differences: the official fp16 = dict(loss_scale=512.) key is ignored by mmdet 3.x (its train.py
# enables AMP only with --amp, dynamic loss scale), so the official run was fp32 unless launched with --amp; same here.
num_levels = 5
model = dict(
    num_feature_levels=num_levels,
    backbone=dict(
        arch='transnext_base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768], num_outs=num_levels),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=num_levels))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=num_levels))))
