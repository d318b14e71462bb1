import os
from pathlib import Path

import dagster as dg


class DatasetSources(dg.ConfigurableResource):
    """Input folders: the official AudioSet lists and ESC-50 / UrbanSound8K in their layouts.

    Unset, each points at the built-in demo dataset, generated into the data root on first use
    (AUDIOCLIP_AUDIOSET_DIR, AUDIOCLIP_ESC50_DIR, AUDIOCLIP_US8K_DIR override them). With an
    archive URL (AUDIOCLIP_ESC50_URL / AUDIOCLIP_US8K_URL, e.g. the official zip or tar.gz) and
    no directory, the archive is fetched once into the data root and unpacked there.
    """

    audioset_dir: str = ""
    esc50_dir: str = ""
    us8k_dir: str = ""
    esc50_archive_url: str = ""
    us8k_archive_url: str = ""

    def _resolve(self, value: str, env: str, demo_sub: str, data_root: Path, archive_url: str = "",
                 archive_env: str = "") -> Path:
        chosen = value or os.environ.get(env, "")
        if chosen:
            return Path(chosen).resolve()
        url = archive_url or (os.environ.get(archive_env, "") if archive_env else "")
        if url:
            from audioclip_core.data.archives import fetch_archive

            return fetch_archive(url, data_root / "sources" / demo_sub)
        from audioclip_core.data.demo_dataset import generate_all

        demo = data_root / "demo_source"
        generate_all(demo)
        return demo / demo_sub

    def uses_demo_audioset(self, data_root: Path) -> bool:
        """True when the AudioSet folder is the built-in demo dataset (by its CSV header)."""
        from audioclip_core.data.demo_dataset import is_demo_folder

        return is_demo_folder(self.audioset(data_root))

    def audioset(self, data_root: Path) -> Path:
        return self._resolve(self.audioset_dir, "AUDIOCLIP_AUDIOSET_DIR", "audioset", data_root)

    def esc50(self, data_root: Path) -> Path:
        return self._resolve(self.esc50_dir, "AUDIOCLIP_ESC50_DIR", "esc50", data_root, self.esc50_archive_url,
                             "AUDIOCLIP_ESC50_URL")

    def us8k(self, data_root: Path) -> Path:
        return self._resolve(self.us8k_dir, "AUDIOCLIP_US8K_DIR", "us8k", data_root, self.us8k_archive_url,
                             "AUDIOCLIP_US8K_URL")
