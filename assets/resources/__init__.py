from .sources import DatasetSources
from .storage import DataRoot
from .youtube import YoutubeDownloader

__all__ = ["DataRoot", "DatasetSources", "YoutubeDownloader"]
