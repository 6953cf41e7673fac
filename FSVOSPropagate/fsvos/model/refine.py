"""Full-resolution refinement of the decoder's logits (the ``refine_dim`` architectures).

The STCN/XRAVOS decoder predicts each object's logits at 1/4 of the frame size and upsamples
them bilinearly: a guidewire 1-2 pixels wide cannot be drawn at 1/4 (``fsvos eval --method
bound``: guidewire J&F 73.8 at best on the synthetic validation set).  The refiner adds to the
upsampled logits a residual computed at full resolution from

* image features of the grey frame: two 3x3 convolutions, ``dim`` channels, once per frame;
* the decoder's last 1/4 features (after its ReLU), projected to ``dim`` channels by a 1x1
  convolution and upsampled bilinearly (projection and upsampling commute);
* the upsampled logits themselves, through a per-channel gain,

summed, through a ReLU and a 3x3 convolution to one channel.  That last convolution starts at
zero, so a network given a refiner starts as exactly the network without it, and a refiner can be
trained onto existing weights.

Shapes: ``image`` (B, 1, H, W) normalised grey (or (B, 3, H, W) whose 3 channels are the same
grey); ``feat4`` (B, d4, H/4, W/4); ``logits`` (B, 1, H, W) float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import decoder_kernels


class Refiner(nn.Module):
    """logits (1/1) + out(relu(image features + up4(feat(feat4)) + logit_gain * logits))."""

    def __init__(self, d4: int, dim: int):
        super().__init__()
        self.image1 = nn.Conv2d(1, dim, 3, padding=1)
        self.image2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.feat = nn.Conv2d(d4, dim, 1)
        self.logit_gain = nn.Conv2d(1, dim, 1, bias=False)
        self.out = nn.Conv2d(dim, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 1 or 3, H, W) normalised grey -> (B, dim, H, W), in the network's dtype."""
        grey = image[:, :1]
        if torch.is_grad_enabled():
            return F.relu(self.image2(F.relu(self.image1(grey))))
        return self.image2(self.image1(grey).relu_()).relu_()  # inference: ReLUs in place

    def forward(self, logits: torch.Tensor, feat4: torch.Tensor, image_feat: torch.Tensor) -> torch.Tensor:
        """Refined logits (B, 1, H, W).

        logits: (B, 1, H, W), the decoder's upsampled logits; feat4: (B, d4, H/4, W/4), the
        decoder's last features after its ReLU; image_feat: (B or 1, dim, H, W) from
        :meth:`image_features` (one map broadcast over B, e.g. the K objects of one frame).
        """
        proj = self.feat(feat4)  # (B, dim, H/4, W/4)
        if decoder_kernels.applies(proj, image_feat, logits) and image_feat.shape[0] == 1:
            # inference on the CPU: one compiled pass, no full-resolution hidden map in memory
            return decoder_kernels.refine_tail(proj, image_feat, logits, self.logit_gain.weight, self.out.weight,
                                               self.out.bias)
        up = F.interpolate(proj, scale_factor=4, mode="bilinear", align_corners=False)
        g = F.relu(up + image_feat + self.logit_gain(logits.to(up.dtype)))
        return logits + self.out(g).to(logits.dtype)
