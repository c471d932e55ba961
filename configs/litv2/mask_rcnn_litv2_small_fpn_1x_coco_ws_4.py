# official: ziplab/LITv2@7501c8662991cad6db780b61fac0886b56a76588:detection/configs/litv2/mask_rcnn_litv2_s_fpn_1x_coco_ws_4.py
# (mmdet 2.x form; its _base_ files as at commit f320e437a5b59f78d7f5abd90007250ce820c053, the code the released
# checkpoints were trained with: at HEAD models/mask_rcnn_fpn.py is gone)
# remaining differences: mmdet 3.x config form only; apex O1 -> torch AMP with a dynamic loss scale; the official
# B configs' gradient checkpointing (use_checkpoint) is a memory setting, left off
_base_ = './mask_rcnn_litv2_small_fpn_1x_coco.py'
# LITv2-S Mask R-CNN 1x, COCO: 44.7 box AP, 40.7 mask AP (LITv2 README (ziplab/LITv2))
# HiLo window 4 in stage 3 (the official *_ws_4 configs)
model = dict(backbone=dict(local_ws=(0, 0, 4, 1)))
