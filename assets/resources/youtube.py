import os
from typing import Optional

import dagster as dg
from pydantic import Field

from audioclip_core.acquisition.youtube import DEFAULT_FORMAT, YOUTUBE_URL_TEMPLATE, DownloadOptions


class YoutubeDownloader(dg.ConfigurableResource):
    """yt-dlp settings. `url_template` maps an id to a URL ({ytid}); AUDIOCLIP_YOUTUBE_URL_TEMPLATE
    overrides the default (the YouTube watch URL), e.g. to a local media server."""

    url_template: str = ""
    format: str = DEFAULT_FORMAT
    max_attempts: int = Field(default=4, ge=1)
    backoff_seconds: float = Field(default=2.0, ge=0)
    sleep_requests: float = Field(default=0.0, ge=0, description="pause between HTTP requests")
    rate_limit: Optional[int] = Field(default=None, description="bytes per second")
    cookies_file: Optional[str] = None
    js_runtime: Optional[str] = Field(default=None, description="'node' or 'deno' for full YouTube support")
    max_workers: int = Field(default=4, ge=1, description="parallel downloads within one run")

    def options(self) -> DownloadOptions:
        return DownloadOptions(
            url_template=self.url_template or os.environ.get("AUDIOCLIP_YOUTUBE_URL_TEMPLATE") or YOUTUBE_URL_TEMPLATE,
            format=self.format, max_attempts=self.max_attempts, backoff_seconds=self.backoff_seconds,
            sleep_requests=self.sleep_requests, rate_limit=self.rate_limit, cookies_file=self.cookies_file,
            js_runtime=self.js_runtime)
