# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:detection/configs/RALA/maskrcnn_s_1x.py
# (mmdet 2.x form, with its _base_ files: models/RALA_rcnn.py, datasets/coco_instance.py, schedules/schedule_1x.py)
# remaining differences: mmdet 3.x config form only
_base_ = './mask_rcnn_ravlt_tiny_fpn_1x_coco.py'
# RAVLT-S Mask R-CNN 1x, COCO: 49.8 box AP, 44.6 mask AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_small',
        drop_path_rate=0.15,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_S.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
