import os
from pathlib import Path

import dagster as dg

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "data"


def default_data_root() -> str:
    return os.environ.get("AUDIOCLIP_DATA_ROOT") or str(DEFAULT_DATA_ROOT)


class DataRoot(dg.ConfigurableResource):
    """Where everything the pipeline writes lives (AUDIOCLIP_DATA_ROOT; default ./data)."""

    root: str = ""

    @property
    def path(self) -> Path:
        p = Path(self.root or default_data_root()).resolve()
        p.mkdir(parents=True, exist_ok=True)
        return p

    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def catalog(self) -> Path:
        return self.path / "catalog.duckdb"
