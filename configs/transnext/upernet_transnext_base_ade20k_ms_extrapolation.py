# TransNeXt-Base UperNet, ADE20K, multi-scale + flip evaluation with position-bias extrapolation: 53.7 mIoU
# (TransNeXt segmentation/upernet/README.md). Evaluate the single-scale model with `tools/test.py <this> <ckpt> --tta`
# (mmseg 1.x's form of the official `--aug-test`: ratios 0.5-1.75 and flip, the tta_pipeline of
# _base_/datasets/ade20k.py).
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:segmentation/upernet/configs/upernet_transnext_base_512x512_160k_ade20k_ms_extrapolation.py
# Remaining differences: those of upernet_transnext_base_ade20k.py (training is the same run).
_base_ = ['./upernet_transnext_base_ade20k.py']
model = dict(
    # the bias is extrapolated (tables rebuilt per input size; img_size has no effect)
    backbone=dict(img_size=800, pos_bias='extrapolate'),
    # whole-image inference of every scale (the official ms config keeps the base's 'whole')
    test_cfg=dict(_delete_=True, mode='whole'))
