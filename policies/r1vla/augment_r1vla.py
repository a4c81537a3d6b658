"""Training-time image augmentation of the `r1vla` policy (GR00T-N1.5's LIBERO fine-tune; OpenVLA-OFT alike).

Training: each view of each sample is cropped at a random position to `crop` of its side (GR00T `VideoCrop
0.95`; OFT crops 90% of the area, side 0.949), resized back, then colour-jittered (torchvision ColorJitter:
brightness 0.3, contrast 0.4, saturation 0.5, hue 0.08 as GR00T). Inference: the same crop, centred, so that
objects keep the scale the policy was trained on (as GR00T and OFT evaluate); no jitter, nothing random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def _crop_resize(img: torch.Tensor, top: int, left: int, side: tuple[int, int]) -> torch.Tensor:
    h, w = img.shape[-2:]
    patch = img[..., top : top + side[0], left : left + side[1]]
    return F.interpolate(patch[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]


def center_crop(images: torch.Tensor, crop: float) -> torch.Tensor:
    """(B, V, 3, H, W) -> the centred `crop` of each side, resized back to (H, W)."""
    if crop >= 1.0:
        return images
    H, W = images.shape[-2:]
    side = (round(H * crop), round(W * crop))
    top, left = (H - side[0]) // 2, (W - side[1]) // 2
    flat = images.flatten(0, 1)  # (B*V, 3, H, W)
    return torch.stack([_crop_resize(x, top, left, side) for x in flat]).view_as(images)


def augment(images: torch.Tensor, cfg) -> torch.Tensor:
    """(B, V, 3, H, W) float in [0, 1] -> randomly cropped and jittered views (draws from the global RNG)."""
    H, W = images.shape[-2:]
    side = (round(H * cfg.augment_crop), round(W * cfg.augment_crop))
    jitter = v2.ColorJitter(
        cfg.augment_brightness, cfg.augment_contrast, cfg.augment_saturation, cfg.augment_hue
    )
    out = []
    for x in images.flatten(0, 1):  # (3, H, W) each
        top = int(torch.randint(0, H - side[0] + 1, ()))
        left = int(torch.randint(0, W - side[1] + 1, ()))
        out.append(jitter(_crop_resize(x.float(), top, left, side)).clamp(0.0, 1.0))
    return torch.stack(out).view_as(images).to(images.dtype)
