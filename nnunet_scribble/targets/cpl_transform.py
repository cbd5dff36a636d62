"""CPL targets inside nnU-Net's augmentation pipeline (runs in the augmentation workers).

``AppendCPLTransform`` computes the CPL maps (``targets.cpl``) of the augmented scribble patch and
appends them to the *image* as ``num_classes`` extra float channels; the MaCo trainer splits them off
again before the forward pass. Image channels are used because nnU-Net's data loader only passes
``image`` and ``segmentation`` through the transforms and the segmentation is an integer tensor.
The transform must run after every intensity transform (they would alter the maps) and after
padding became ``ignore``; the trainer places it just before the deep-supervision downsampling.

Where it costs least was measured (``benchmarks/results/maco_speed.md``): in the workers it runs
in parallel with the training step, in the training step it would add to it serially.
"""
from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_scribble.targets.cpl import cpl_targets


class AppendCPLTransform(BasicTransform):
    def __init__(self, num_classes: int, decay: float, floor: float, spacing=None, scribble_channel: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.decay = decay
        self.floor = floor
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.scribble_channel = scribble_channel

    def apply(self, data_dict, **params):
        scribble = data_dict["segmentation"][self.scribble_channel].numpy()
        spacing = self.spacing if self.spacing is not None and len(self.spacing) == scribble.ndim else None
        cpl = torch.from_numpy(cpl_targets(scribble, self.num_classes, self.decay, self.floor, spacing))
        data_dict["image"] = torch.cat([data_dict["image"], cpl.to(data_dict["image"].dtype)])
        return data_dict
