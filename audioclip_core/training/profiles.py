"""Named training profiles: the paper's values, and a tiny one for the demo data on a CPU."""
from __future__ import annotations

PROFILES = {
    # the paper: SGD + Nesterov 0.9, wd 5e-4, batch 64; AudioSet stages 1e-4 / 0.95 / 30 epochs,
    # fine-tuning 5e-5 / 0.98 / 50 epochs
    "paper": {
        "audioset": dict(preset="audioclip-rn50", epochs=30, batch_size=64, lr=1e-4, gamma=0.95, clip_seconds=10.0),
        "finetune": dict(preset="audioclip-rn50", epochs=50, batch_size=64, lr=5e-5, gamma=0.98, clip_seconds=5.0),
    },
    # the demo data: six synthetic classes, 4 s clips; minutes on 2 cores
    "demo": {
        "audioset": dict(preset="audioclip-tiny", epochs=6, batch_size=16, lr=0.02, gamma=0.9, clip_seconds=4.0),
        "finetune": dict(preset="audioclip-tiny", epochs=4, batch_size=12, lr=0.01, gamma=0.9, clip_seconds=4.0),
    },
}


def profile_values(profile: str, kind: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown training profile {profile!r}; one of {sorted(PROFILES)}")
    return dict(PROFILES[profile][kind])
