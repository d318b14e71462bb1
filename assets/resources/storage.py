import dagster as dg

from audioclip_core.layout import DataLayout


class DataRoot(dg.ConfigurableResource):
    """Where everything the pipeline writes lives: `root`, else AUDIOCLIP_DATA_ROOT, else `data/`
    of the checkout (audioclip_core.layout, shared with the `audioclip` CLI)."""

    root: str = ""

    @property
    def layout(self) -> DataLayout:
        layout = DataLayout.at(self.root or None)
        layout.root.mkdir(parents=True, exist_ok=True)
        return layout
