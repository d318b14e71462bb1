"""audioclip_core: AudioCLIP models, checkpoints, losses, data, training and evaluation.

Imports no Dagster; usable alone from a notebook or a script::

    import audioclip_core as ac
    model = ac.load_model("AudioCLIP-Full-Training.pt")
    emb = model.encode_audio(waveform_int16_range)        # [B, 1024], raw
"""
from .checkpoints import (
    CheckpointError,
    build_model,
    convert,
    export_official,
    load_audio_classifier,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from .losses import contrastive_loss
from .models import AudioCLIP, AudioCLIPOutput, AudioConfig, ESResNeXt, available_presets, get_preset
from .text import tokenize

__version__ = "0.1.0"

__all__ = [
    "AudioCLIP", "AudioCLIPOutput", "AudioConfig", "CheckpointError", "ESResNeXt",
    "available_presets", "build_model", "contrastive_loss", "convert", "export_official",
    "get_preset", "load_audio_classifier", "load_model", "read_checkpoint", "save_checkpoint",
    "tokenize",
]
