import os
from pathlib import Path

import dagster as dg

from audioclip_core.layout import DataLayout


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

    def _resolve(self, value: str, env: str, demo_sub: str, layout: DataLayout, archive_url: str = "",
                 archive_env: str = "") -> Path:
        chosen = value or os.environ.get(env, "")
        if chosen:
            return Path(chosen).resolve()
        url = archive_url or (os.environ.get(archive_env, "") if archive_env else "")
        if url:
            from audioclip_core.acquisition.archives import fetch_archive

            return fetch_archive(url, layout.fetched_source(demo_sub))
        from audioclip_core.data.demo_dataset import generate_all

        generate_all(layout.demo_source)
        return layout.demo_source / demo_sub

    def audioset_is_demo(self) -> bool:
        """True when no AudioSet folder is configured: the built-in demo dataset is used."""
        return not (self.audioset_dir or os.environ.get("AUDIOCLIP_AUDIOSET_DIR"))

    def audioset_partitions(self, layout: DataLayout) -> list[str]:
        """The AudioSet partitions whose segment list exists (the demo's, before it is generated)."""
        from audioclip_core.data import demo_dataset
        from audioclip_core.data.audioset import available_partitions

        if self.audioset_is_demo():
            return list(demo_dataset.PARTITIONS)
        return available_partitions(self.audioset(layout))

    def uses_demo_audioset(self, layout: DataLayout) -> bool:
        """True when the AudioSet folder is the built-in demo dataset (by its CSV header)."""
        from audioclip_core.data.demo_dataset import is_demo_folder

        return is_demo_folder(self.audioset(layout))

    def audioset(self, layout: DataLayout) -> Path:
        return self._resolve(self.audioset_dir, "AUDIOCLIP_AUDIOSET_DIR", "audioset", layout)

    def esc50(self, layout: DataLayout) -> Path:
        return self._resolve(self.esc50_dir, "AUDIOCLIP_ESC50_DIR", "esc50", layout, self.esc50_archive_url,
                             "AUDIOCLIP_ESC50_URL")

    def us8k(self, layout: DataLayout) -> Path:
        return self._resolve(self.us8k_dir, "AUDIOCLIP_US8K_DIR", "us8k", layout, self.us8k_archive_url,
                             "AUDIOCLIP_US8K_URL")
