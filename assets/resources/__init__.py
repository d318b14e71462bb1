from .launcher import TrainingLauncher
from .sources import DatasetSources
from .storage import DataRoot
from .tracking import MlflowTracking
from .youtube import YoutubeDownloader

__all__ = ["DataRoot", "DatasetSources", "MlflowTracking", "TrainingLauncher", "YoutubeDownloader"]
