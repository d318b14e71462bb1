import os
from pathlib import Path

import dagster as dg


class DatasetSources(dg.ConfigurableResource):
    """Input folders: the official AudioSet lists and ESC-50 / UrbanSound8K in their layouts.

    Unset, each points at the built-in demo dataset, generated into the data root on first use
    (AUDIOCLIP_AUDIOSET_DIR, AUDIOCLIP_ESC50_DIR, AUDIOCLIP_US8K_DIR override them).
    """

    audioset_dir: str = ""
    esc50_dir: str = ""
    us8k_dir: str = ""

    def _resolve(self, value: str, env: str, demo_sub: str, data_root: Path) -> Path:
        chosen = value or os.environ.get(env, "")
        if chosen:
            return Path(chosen).resolve()
        from audioclip_core.data.demo_dataset import generate_all

        demo = data_root / "demo_source"
        generate_all(demo)
        return demo / demo_sub

    def audioset(self, data_root: Path) -> Path:
        return self._resolve(self.audioset_dir, "AUDIOCLIP_AUDIOSET_DIR", "audioset", data_root)

    def esc50(self, data_root: Path) -> Path:
        return self._resolve(self.esc50_dir, "AUDIOCLIP_ESC50_DIR", "esc50", data_root)

    def us8k(self, data_root: Path) -> Path:
        return self._resolve(self.us8k_dir, "AUDIOCLIP_US8K_DIR", "us8k", data_root)
