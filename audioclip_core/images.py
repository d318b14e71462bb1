"""CLIP's image preprocessing, the one pipeline used by the CLI, training and evaluation.

Exactly OpenAI's (and open_clip's) evaluation transform: the short side resized to the
tower's input size (bicubic, antialiased), a centre crop, [0, 1] RGB, then normalised with
CLIP's mean and std. Training draws the crop's position at random instead of centring it.

`clip_preprocess_jpegs` is the same transform for a training batch on the training device:
JPEG bytes decoded there (nvjpeg, the whole batch at once, on CUDA), resized as tensors and
cropped where a DataLoader worker drew the crop (`draw_crop`, from the JPEG header's size;
the same draws as `clip_preprocess`). Its pixels are not PIL's: another resampler (tensor
bicubic, antialiased) and on CUDA another IDCT; `tests/core/data/test_device_augment.py`
bounds the difference. Evaluation and the CLI keep the PIL path.
"""

from __future__ import annotations

import io
from typing import Optional, Sequence

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
        left, top = draw_crop(*im.size, size, rng)
        im = TF.crop(im, top, left, size, size)
    return TF.normalize(TF.to_tensor(im), CLIP_MEAN, CLIP_STD)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of an image whose short side is resized to `size`, as torchvision's
    resize computes it (the long side scaled and truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def draw_crop(width: int, height: int, size: int, rng: torch.Generator) -> tuple[int, int]:
    """(left, top) of a random `size` x `size` crop of a resized image of `width` x `height`."""
    left = int(torch.randint(0, width - size + 1, (), generator=rng))
    top = int(torch.randint(0, height - size + 1, (), generator=rng))
    return left, top


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of JPEG bytes, from the header (nothing is decoded)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def clip_preprocess_jpegs(
    jpegs: Sequence[torch.Tensor], crops: torch.Tensor, size: int, device=None, *, any_format: bool = False
) -> torch.Tensor:
    """JPEG bytes (uint8 tensors on the CPU) -> `[B, 3, size, size]` CLIP inputs on `device`:
    decoded there, the short side resized to `size` (bicubic, antialiased), cropped at
    `crops` `[B, 2]` (left, top; `draw_crop` of the resized size), normalised. `any_format`:
    decoded on the CPU by the image's own format (a PNG or WebP frame), as PIL would read it."""
    import torchvision.transforms.functional as TF
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms import InterpolationMode

    device = torch.device(device or "cpu")
    if any_format:
        images = [decode_image(j, mode=ImageReadMode.RGB).to(device) for j in jpegs]
    else:
        images = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device)
    out = []
    for image, (left, top) in zip(images, crops.tolist()):
        width, height = resized_size(image.shape[-1], image.shape[-2], size)
        image = TF.resize(image, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        out.append(image[:, top : top + size, left : left + size])
    x = torch.stack(out).float() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_clip_image(path, size: int, rng: Optional[torch.Generator] = None) -> torch.Tensor:
    with Image.open(path) as im:
        return clip_preprocess(im, size, rng)
