from .audioclip import AudioCLIP, AudioCLIPOutput, Features, Logits
from .esresnext import AudioConfig, ESResNeXt
from .fbsp import LinearFBSP
from .presets import available_presets, build_from_preset, get_preset

__all__ = [
    "AudioCLIP",
    "AudioCLIPOutput",
    "Features",
    "Logits",
    "AudioConfig",
    "ESResNeXt",
    "LinearFBSP",
    "available_presets",
    "build_from_preset",
    "get_preset",
]
