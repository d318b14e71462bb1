import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from audioclip_core.layout import DataLayout


class DatasetSources(dg.ConfigurableResource):
    """Input folders: the official AudioSet lists and each clip set of
    `audioclip_core.data.clipsets.SPECS` (ESC-50, UrbanSound8K) in its official layout.

    A clip set's folder is, in order: its field here (`esc50_dir`, `us8k_dir`; a set without a
    field of its own: `clipset_dirs[name]`), then the environment (AUDIOCLIP_<NAME>_DIR:
    AUDIOCLIP_ESC50_DIR, AUDIOCLIP_US8K_DIR). With neither, an archive URL (`esc50_archive_url`,
    `us8k_archive_url`, `clipset_archive_urls[name]`, else AUDIOCLIP_<NAME>_URL, e.g. the
    official zip or tar.gz) is fetched once into the data root and unpacked there. With no URL
    either, ESC-50 and UrbanSound8K point at the built-in demo dataset, generated into the data
    root on first use (as AudioSet does without AUDIOCLIP_AUDIOSET_DIR).
    """

    audioset_dir: str = ""
    esc50_dir: str = ""
    us8k_dir: str = ""
    esc50_archive_url: str = ""
    us8k_archive_url: str = ""
    clipset_dirs: dict[str, str] = Field(
        default_factory=dict, description="clip-set name -> folder, for a set without a field of its own"
    )
    clipset_archive_urls: dict[str, str] = Field(
        default_factory=dict, description="clip-set name -> archive URL, for a set without a field of its own"
    )

    def _resolve(
        self, value: str, env: str, demo_sub: str, layout: DataLayout, archive_url: str = "", archive_env: str = ""
    ) -> Path:
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

    def clipset(self, name: str, layout: DataLayout) -> Path:
        """The folder of clip set `name` (a key of `SPECS`), resolved as the class docstring says."""
        from audioclip_core.data.clipsets import protocol

        spec = protocol(name)  # an unknown name fails here, listing the known ones
        folder = getattr(self, f"{name}_dir", "") or self.clipset_dirs.get(name, "")
        url = getattr(self, f"{name}_archive_url", "") or self.clipset_archive_urls.get(name, "")
        root = self._resolve(folder, spec.dir_env, name, layout, url, spec.url_env)
        if root == layout.demo_source / name and not root.is_dir():
            raise FileNotFoundError(
                f"{name}: nothing configured and the built-in demo dataset holds no {spec.title}: set "
                f"{spec.dir_env} (or the resource's clipset_dirs['{name}']) to its folder in the official layout, "
                f"or {spec.url_env} to an archive of it"
            )
        return root

    def esc50(self, layout: DataLayout) -> Path:
        return self.clipset("esc50", layout)

    def us8k(self, layout: DataLayout) -> Path:
        return self.clipset("us8k", layout)
