from .sources import DatasetSources
from .storage import DataRoot
from .tracking import MlflowTracking
from .youtube import YoutubeDownloader

__all__ = ["DataRoot", "DatasetSources", "MlflowTracking", "YoutubeDownloader"]
