"""audioclip_core: AudioCLIP models, checkpoints, losses, data, training and evaluation.

Imports no Dagster; usable alone from a notebook or a script::

    import audioclip_core as ac
    model = ac.load_model("AudioCLIP-Full-Training.pt")
    emb = model.encode_audio(waveform_int16_range)        # [B, 1024], raw

The names below are imported on first use, so the data tools (`audioclip_core.data`,
`.youtube`, `.media`) load without torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "checkpoints",
    "build_model": "checkpoints",
    "convert": "checkpoints",
    "export_official": "checkpoints",
    "load_audio_classifier": "checkpoints",
    "load_model": "checkpoints",
    "read_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "contrastive_loss": "losses",
    "InputError": "errors",
    "AudioCLIP": "models",
    "AudioCLIPOutput": "models",
    "AudioConfig": "models",
    "ESResNeXt": "models",
    "LinearFBSP": "models",
    "available_presets": "models",
    "get_preset": "models",
    "tokenize": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audioclip_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
