# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:detection/configs/RALA/maskrcnn_l_1x.py
# (mmdet 2.x form, with its _base_ files: models/RALA_rcnn.py, datasets/coco_instance.py, schedules/schedule_1x.py)
# remaining differences: mmdet 3.x config form only
_base_ = './mask_rcnn_ravlt_tiny_fpn_1x_coco.py'
# RAVLT-L Mask R-CNN 1x, COCO: 52.3 box AP, 46.4 mask AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_large',
        drop_path_rate=0.55,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
