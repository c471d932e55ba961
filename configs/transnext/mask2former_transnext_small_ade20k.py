_base_ = ['./mask2former_transnext_tiny_ade20k.py']
# TransNeXt-Small Mask2Former, ADE20K 160k, 512x512: 54.1 mIoU (TransNeXt README (DaiShiResearch/TransNeXt),
# segmentation/mask2former); drop path 0.5 as its mm backbone; the recipe of the tiny config
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:segmentation/mask2former/configs/mask2former_transnext_small_160k_ade20k-512x512.py
# Remaining differences: none in the recipe (mmseg 1.x config of the official one; the backbone lr x0.1 via
# BackboneLrMultOptimWrapperConstructor, which also keeps biases and norms of the backbone without decay as the
# official bias_decay_mult/norm_decay_mult do).
model = dict(
    backbone=dict(
        arch='transnext_small',
        drop_path_rate=0.5,
        img_size=512,  # position tables for the crop, coordinates scaled by the 224 pre-training
        pretrain_size=224,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth')),
    decode_head=dict(in_channels=[72, 144, 288, 576]))
