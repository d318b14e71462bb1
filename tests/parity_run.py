"""Runs our implementation on a parity fixture set and returns {name: array} for compare.py.

Used by tests/core/models/test_parity.py; also runnable by hand:
    python tests/parity_run.py [PARITY_DIR]      (default: ../shared/parity)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

import audioclip_core as ac


def load_fixture_modules(parity_dir: Path):
    mods = {}
    for name in ("make_state", "compare"):
        spec = importlib.util.spec_from_file_location(
            f"parity_{name}_{abs(hash(str(parity_dir)))}", parity_dir / f"{name}.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods["make_state"], mods["compare"]


def run_parity(parity_dir: Path, model_cache: dict | None = None) -> tuple[dict, object]:
    make_state, compare = load_fixture_modules(parity_dir)
    manifest = make_state.load_manifest(str(parity_dir / "manifest.json"))
    small = make_state.load_small_tensors(str(parity_dir / "small_tensors.npz"))
    ref = compare.load_reference(str(parity_dir / "reference_outputs.npz"))
    inputs = compare.reference_inputs(ref)
    sd = make_state.make_state_dict(manifest, "audioclip", small_tensors=small)
    sd_cls = make_state.make_state_dict(manifest, "esrnxfbsp_527", small_tensors=small)

    model = ac.load_model(sd)  # strict, official layout, eval mode
    classifier = ac.load_audio_classifier(sd_cls)
    out: dict[str, np.ndarray] = {}
    entities = inputs["text_entities"]
    with torch.no_grad():
        out["tokens"] = ac.tokenize(inputs["text_joined"]).numpy().astype(ref["tokens"].dtype)
        mono = torch.from_numpy(inputs["audio_mono"])
        images = torch.from_numpy(inputs["images"])
        # every audio input the set provides (mono, stereo, short, or others recorded the same way)
        for key in [k for k in inputs if k.startswith("audio_")]:
            raw = model.encode_audio(torch.from_numpy(np.asarray(inputs[key], dtype=np.float32)))
            out[f"{key}_emb_raw"] = raw.numpy()
            out[f"{key}_emb"] = (raw / raw.norm(dim=-1, keepdim=True)).numpy()
        if "audio_short" in inputs:
            short = ac.models.esresnext.rescale_int16(torch.from_numpy(np.asarray(inputs["audio_short"], np.float32)))
            spec = model.audio.spectrogram(short)
            out["audio_short_spec"] = spec.numpy()
            out["audio_short_xdb"] = model.audio.to_db(spec, short.shape[0]).numpy()
        n = model.audio.config.n_fft
        kernel = model.audio.fbsp.kernel(n)
        idx = ref["fbsp_kernel_rows_idx"]
        out["fbsp_kernel_rows"] = kernel[torch.from_numpy(idx.astype(np.int64))].numpy()
        out["fbsp_kernel_rows_idx"] = idx
        fresh = ac.models.LinearFBSP(n // 2 + 1, normalized=True)
        idx0 = ref["fbsp_init_kernel_rows_idx"]
        out["fbsp_init_kernel_rows"] = fresh.kernel(n)[torch.from_numpy(idx0.astype(np.int64))].numpy()
        out["fbsp_init_kernel_rows_idx"] = idx0
        img_raw = model.encode_image(images)
        out["image_emb_raw"] = img_raw.numpy()
        img = img_raw / img_raw.norm(dim=-1, keepdim=True)
        out["image_emb"] = img.numpy()
        txt_raw = model.encode_text(entities)
        out["text_emb_raw"] = txt_raw.numpy()
        txt = txt_raw / txt_raw.norm(dim=-1, keepdim=True)
        out["text_emb"] = txt.numpy()
        s_it, s_ai, s_at = model.logit_scales()
        out["logit_scales_it_ai_at"] = torch.stack([s_it, s_ai, s_at]).numpy()
        a = torch.from_numpy(out["audio_mono_emb"])
        out["logits_audio_image"] = (s_ai * a @ img.T).numpy()
        lat = s_at * a @ txt.T
        out["logits_audio_text"] = lat.numpy()
        out["logits_image_text"] = (s_it * img @ txt.T).numpy()
        out["zs_probs_softmax"] = torch.softmax(lat, dim=-1).numpy()
        out["zs_probs_sigmoid"] = torch.sigmoid(lat / s_at - 0.5).numpy()
        k = mono.shape[0]
        fwd3 = model(audio=mono, image=images[:k], text=entities[:k])
        out["fwd3_logits_ai"] = fwd3.logits.audio_image.numpy()
        out["fwd3_logits_at"] = fwd3.logits.audio_text.numpy()
        out["fwd3_logits_it"] = fwd3.logits.image_text.numpy()
        out["fwd3_loss"] = fwd3.loss.numpy()
        out["fwd2_loss_audio_text"] = model(audio=mono, text=entities[:k]).loss.numpy()
        out["loss_ttf"] = model.loss_ttf().numpy()
        logits = classifier(mono)
        out["cls_logits"] = logits.numpy()
        target = torch.from_numpy(inputs["cls_target"])
        out["cls_loss"] = classifier.classification_loss(logits, target).numpy()
    out = {k: v for k, v in out.items() if k in ref}
    return out, compare


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "parity")
    torch.set_num_threads(2)
    outputs, compare = run_parity(d)
    print(compare.report(compare.compare(outputs, ref=str(d / "reference_outputs.npz"))))
