import json

import pytest
import torch

import audioclip_core as ac
from audioclip_core.models.esresnext import rescale_int16
from audioclip_core.models.fbsp import blackman_harris, frame_signal


def test_window_is_periodic_blackman_harris():
    scipy_signal = pytest.importorskip("scipy.signal")
    ref = scipy_signal.get_window("blackmanharris", 1654, fftbins=True)
    assert torch.allclose(blackman_harris(1654).double(), torch.from_numpy(ref), atol=1e-7)


@pytest.mark.parametrize("length,frames", [(220500, 392), (176400, 313), (44100, 77), (1323, 1), (1654, 1), (1655, 2)])
def test_frame_counts(length, frames):
    x = torch.ones(1, length)
    assert frame_signal(x, 1654, 561, torch.ones(1654)).shape == (1, frames, 1654)


def test_float32_rescale_quantises_unit_input_like_the_reference():
    import numpy as np

    x = np.array([0.001, -0.001, 0.5, 0.0], dtype=np.float32)
    f = np.float32
    expected = ((x + f(32768.0)) * f(2.0)) / f(65535.0) - f(1.0)  # the reference's float32 order
    y = rescale_int16(torch.from_numpy(x))
    assert np.array_equal(y.numpy(), expected)
    # x + 32768 in float32 has steps of 2**-8 above 32768: 0.001 is rounded away to 0 ...
    assert y[0] == y[3]
    # ... which a float64 rescale would not do
    assert ((0.001 + 32768.0) * 2.0) / 65535.0 - 1.0 != ((0.0 + 32768.0) * 2.0) / 65535.0 - 1.0
    assert rescale_int16(torch.tensor([-32768.0, 32767.0])).tolist() == [-1.0, 1.0]


def test_short_and_multichannel_clips(tiny_model):
    with torch.no_grad():
        for shape in [(2, 1, 1323), (1, 3, 44100), (1, 2, 30000)]:
            out = tiny_model.encode_audio(torch.randn(*shape) * 3000)
            assert out.shape == (shape[0], tiny_model.embed_dim) and torch.isfinite(out).all()


def test_channels_are_summed_through_one_backbone(tiny_model):
    x = torch.randn(1, 3, 20000) * 3000
    with torch.no_grad():
        summed = sum(tiny_model.audio.embed(tiny_model.audio.preprocess(x[:, i : i + 1])) for i in range(3))
        together = tiny_model.audio.embed(tiny_model.audio.preprocess(x))
    assert torch.allclose(summed, together, rtol=1e-4, atol=1e-4)


def test_fbsp_gradients_are_max_normalised():
    head = ac.ESResNeXt(ac.AudioConfig.from_dict({**ac.get_preset("audioclip-tiny")["audio_cfg"], "num_classes": 4}))
    loss = head(torch.randn(2, 1, 8000) * 5000).pow(2).sum() * 1000
    loss.backward()
    for p in (head.fbsp.m, head.fbsp.fb, head.fbsp.fc):
        assert abs(float(p.grad.abs().max()) - 1.0) < 1e-5
    assert head.fbsp.bias.numel() == 0


def test_forward_reference_semantics(tiny_model):
    audio = torch.randn(3, 1, 10000) * 2000
    image = torch.randn(3, 3, 224, 224)
    text = [["dog", "bark"], ["rain"], ["car horn"]]
    with torch.no_grad():
        out = tiny_model(audio=audio, image=image, text=text)
        a, i, t = out.features
        assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
        s_it, s_ai, s_at = tiny_model.logit_scales()
        assert torch.allclose(out.logits.audio_text, s_at * a @ t.T)
        assert float(s_ai) == 100.0  # ln 100 init sits at the clamp ceiling
        ce = torch.nn.functional.cross_entropy
        tgt = torch.arange(3)
        total = sum(ce(lg, tgt) + ce(lg.T, tgt) for lg in out.logits)
        assert torch.allclose(out.loss, total / 6 + tiny_model.loss_ttf(), atol=1e-5)
        two = tiny_model(image=image, text=text)  # one pair: not halved, no ttf term
        lg = two.logits.image_text
        assert torch.allclose(two.loss, ce(lg, tgt) + ce(lg.T, tgt), atol=1e-6)
        assert two.logits.audio_text is None and two.features.audio is None
        assert tiny_model(text=text).loss is None


def test_logit_scales_clamped_at_use_not_in_parameter(tiny_model):
    model = ac.build_model("audioclip-tiny")
    with torch.no_grad():
        model.logit_scale_at.fill_(7.0)
        model.logit_scale_ai.fill_(-3.0)
    with torch.no_grad():
        s_it, s_ai, s_at = model.logit_scales()
    assert float(s_at) == 100.0 and float(s_ai) == 1.0 and float(model.logit_scale_at.detach()) == 7.0


def test_freeze_cooperative(tiny_model):
    model = ac.build_model("audioclip-tiny")
    model.freeze(image=True, text=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in model.named_parameters() if n.startswith("audio.") or n in ("logit_scale_ai", "logit_scale_at")
    }


def test_other_open_clip_tower_sets_audio_projection(tmp_path):
    preset = tmp_path / "audioclip-rn50-tiny-towers.json"
    preset.write_text(
        json.dumps(
            {
                "open_clip_model": "RN50",
                "embed_dim": 64,
                "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
                "audio_cfg": ac.get_preset("audioclip-tiny")["audio_cfg"],
            }
        )
    )
    model = ac.build_model(str(preset)).eval()
    assert model.audio.fc.out_features == 64
    with torch.no_grad():
        out = model(audio=torch.randn(2, 1, 5000), image=torch.randn(2, 3, 64, 64), text=["a", "b"])
    assert out.logits.audio_image.shape == (2, 2)


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="audioclip-rn50, audioclip-tiny"):
        ac.get_preset("nope")


def test_kernel_cache_follows_parameter_changes(tiny_model):
    model = ac.build_model("audioclip-tiny").eval()
    fbsp = model.audio.fbsp
    with torch.no_grad():
        first = fbsp.cached_kernel(512)
        assert fbsp.cached_kernel(512) is first  # reused while the weights are unchanged
        fbsp.m.add_(0.5)  # an optimiser step or a load changes _version
        second = fbsp.cached_kernel(512)
    assert not torch.equal(first, second) and torch.allclose(second, fbsp.kernel(512))


def test_fast_inference_matches_the_plain_path():
    model = ac.build_model("audioclip-tiny").eval()
    x = torch.randn(3, 2, 30000) * 3000
    with torch.no_grad():
        ref = model.encode_audio(x)
        model.audio.enable_fast_inference(compile=False, channels_last=True)
        fast = model.encode_audio(x)
        model.audio.enable_fast_inference(compile=False, channels_last=True, bf16=True)
        bf16 = model.encode_audio(x)
        model.audio.disable_fast_inference()
        again = model.encode_audio(x)
    cos = torch.nn.functional.cosine_similarity
    assert cos(fast, ref).min() > 0.99999 and cos(bf16, ref).min() > 0.999
    assert torch.equal(again, ref)


@pytest.mark.slow
def test_compiled_backbone_matches_the_plain_path_and_follows_weight_changes():
    model = ac.build_model("audioclip-tiny").eval()
    x = torch.randn(3, 1, 20000) * 3000
    with torch.no_grad():
        ref = model.encode_audio(x)
        model.audio.enable_fast_inference(compile=True)  # weights frozen into the compiled code
        out = model.encode_audio(x)
        short = model.encode_audio(x[:2])  # padded to the compiled batch of 3
        model.audio.layer1[0].conv1.weight.mul_(1.5)  # an in-place change, as load_state_dict makes
        model.audio.fc.bias.add_(0.25)
        changed = model.encode_audio(x)
        model.audio.disable_fast_inference()
        plain_changed = model.encode_audio(x)
    cos = torch.nn.functional.cosine_similarity
    assert cos(out, ref).min() > 0.99999
    assert short.shape == (2, ref.shape[1]) and cos(short, ref[:2]).min() > 0.99999
    assert (changed - out).abs().max() > 0.1  # not the stale frozen weights
    assert cos(changed, plain_changed).min() > 0.99999


def test_text_tower_cut_at_the_last_end_of_text_matches_the_full_context():
    from open_clip.model import CLIP

    model = ac.build_model("audioclip-tiny").eval()
    texts = ["a dog", "rain falling on a tin roof in the night", "x"]
    tokens = model.tokenize(texts)
    eot = tokens.argmax(-1)
    assert int(eot.max()) + 1 < tokens.shape[1]  # the cut is real: shorter than the context
    long_prompt = "word " * (tokens.shape[1] - 2)  # fills the whole context
    lengths = []
    hook = model.transformer.register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        for batch in (texts, texts[:1], [long_prompt, "a dog"]):
            toks = model.tokenize(batch)
            lengths.clear()
            cut = model.encode_text(batch)
            assert lengths == [int(toks.argmax(-1).max()) + 1]  # the tower saw only that many positions
            lengths.clear()
            full = CLIP.encode_text(model, toks)
            assert lengths == [tokens.shape[1]]  # open_clip's own path: the whole context
            assert cut.shape == full.shape
            torch.testing.assert_close(cut, full, rtol=0, atol=1e-5)
    hook.remove()


def test_front_end_stays_float32_under_bf16_autocast():
    model = ac.build_model("audioclip-tiny").train()
    x = torch.randn(2, 1, 20000) * 3000
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_db = model.audio.preprocess(x)
        out = model(audio=x, text=["sine wave", "siren"])
    assert x_db.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.audio.fc.weight.grad is not None


def test_attention_gate_pools_only_when_the_size_changes(monkeypatch):
    import torch.nn.functional as F

    from audioclip_core.models.esresnext import Attention2d

    gate = Attention2d(4, 8, (3, 1), (1, 0)).eval()
    x = torch.randn(2, 4, 6, 5)
    pooled = F.adaptive_max_pool2d(x, x.shape[-2:])
    assert torch.equal(pooled, x)  # a same-size pool is an identity, so skipping it is exact
    calls = []
    real = F.adaptive_max_pool2d
    monkeypatch.setattr(F, "adaptive_max_pool2d", lambda t, size: calls.append(tuple(size)) or real(t, size))
    y = gate(x, x.shape[-2:])
    assert calls == []
    assert torch.equal(y, torch.sigmoid(gate.bn(gate.conv_point(gate.conv_depth(pooled)))))
    assert gate(x, (3, 5)).shape == (2, 8, 3, 5) and calls == [(3, 5)]
