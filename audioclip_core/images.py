"""CLIP's image preprocessing, the one pipeline used by the CLI, training and evaluation.

Exactly OpenAI's (and open_clip's) evaluation transform: the short side resized to the
tower's input size (bicubic, antialiased), a centre crop, [0, 1] RGB, then normalised with
CLIP's mean and std. Training draws the crop's position at random instead of centring it.
"""

from __future__ import annotations

from typing import Optional

import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(image: Image.Image, size: int, rng: Optional[torch.Generator] = None) -> torch.Tensor:
    """A PIL image -> `[3, size, size]` CLIP input; `rng` draws a random crop (training)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    im = TF.resize(image.convert("RGB"), size, interpolation=InterpolationMode.BICUBIC)
    if rng is None:
        im = TF.center_crop(im, [size, size])
    else:
        w, h = im.size
        left = int(torch.randint(0, w - size + 1, (), generator=rng))
        top = int(torch.randint(0, h - size + 1, (), generator=rng))
        im = TF.crop(im, top, left, size, size)
    return TF.normalize(TF.to_tensor(im), CLIP_MEAN, CLIP_STD)


def load_clip_image(path, size: int, rng: Optional[torch.Generator] = None) -> torch.Tensor:
    with Image.open(path) as im:
        return clip_preprocess(im, size, rng)
