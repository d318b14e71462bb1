import math

import torch

from audioclip_core.data.transforms import (
    RandomCrop,
    RandomNoise,
    RandomPadding,
    TimeInversion,
    eval_transforms,
    sample_generator,
    time_scale,
    train_transforms,
)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_train_chain_is_reproducible_and_fixed_length():
    x = torch.randn(2, 30000)
    t = train_transforms(44100)
    a = t(x.clone(), sample_generator(5, 1, 17))
    b = t(x.clone(), sample_generator(5, 1, 17))
    c = t(x.clone(), sample_generator(5, 2, 17))
    assert a.shape == (2, 44100) and torch.equal(a, b) and not torch.equal(a, c)


def test_time_inversion_modes():
    x = torch.arange(6.0).view(2, 3)
    always = TimeInversion(p=1.0, mode="time")
    assert torch.equal(always(x, _g()), torch.tensor([[2.0, 1, 0], [5, 4, 3]]))
    reference = TimeInversion(p=1.0, mode="channels")  # the published code's behaviour
    assert torch.equal(reference(x, _g()), torch.tensor([[3.0, 4, 5], [0, 1, 2]]))
    flips = sum(not torch.equal(TimeInversion(0.5)(x, _g(s)), x) for s in range(400))
    assert 150 < flips < 250


def test_time_scale_length_and_interpolation():
    x = torch.arange(10.0).view(1, 10)
    y = time_scale(x, 1.5)
    assert y.shape == (1, 15)
    assert torch.allclose(y[0, :4], torch.tensor([0.0, 2 / 3, 4 / 3, 2.0]))
    assert time_scale(x, 1 / 1.5).shape == (1, 6)


def test_pad_centre_and_crop_fallback():
    x = torch.ones(1, 4)
    padded = RandomPadding(8, train=False)(x, _g())
    assert padded.shape == (1, 8) and torch.equal(padded, torch.ones(1, 8))
    # loud only at the start: a centred crop is silent, so the first samples are taken
    sig = torch.zeros(1, 100)
    sig[0, :20] = torch.randn(20)
    crop = RandomCrop(20, train=False)(sig, _g())
    assert torch.equal(crop, sig[:, :20])
    # silent centre, weak start, loud end: the start is better than the centre but still
    # below half the clip's std, so the reference takes the last samples
    sig = torch.zeros(1, 100)
    sig[0, :20] = 0.05 * torch.randn(20)
    sig[0, -20:] = torch.randn(20)
    assert torch.equal(RandomCrop(20, train=False)(sig, _g()), sig[:, -20:])
    assert eval_transforms(50)(torch.randn(1, 80), _g()).shape == (1, 50)


def test_noise_probability_and_snr():
    x = torch.sin(torch.linspace(0, 200, 20000)).view(1, -1)
    applied = sum(not torch.equal(RandomNoise(p=0.25)(x, _g(s)), x) for s in range(400))
    assert 70 < applied < 130
    fixed = RandomNoise(snr_min_db=20.0, snr_max_db=19.0, p=1.0)  # U*(0)+20 -> exactly 20 dB
    y = fixed(x, _g(1))
    snr = 10 * math.log10(float(x.pow(2).mean() / (y - x).pow(2).mean()))
    assert abs(snr - 20.0) < 0.5
