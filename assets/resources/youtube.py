import contextlib
import os
from typing import Iterator, Optional

import dagster as dg
from pydantic import Field

from audioclip_core.acquisition.media import TAIL_TOLERANCE
from audioclip_core.acquisition.youtube import DEFAULT_FORMAT, YOUTUBE_URL_TEMPLATE, DownloadOptions
from audioclip_core.layout import DataLayout

from .sources import DatasetSources


class YoutubeDownloader(dg.ConfigurableResource):
    """yt-dlp settings. `url_template` maps an id to a URL ({ytid}); AUDIOCLIP_YOUTUBE_URL_TEMPLATE
    overrides the default (the YouTube watch URL), e.g. to a local media server.

    The stand-in for YouTube: when neither is set and the AudioSet source is the built-in demo
    dataset, `serving()` serves the demo's videos on 127.0.0.1 for as long as the step that
    downloads runs, and stops the server after it, so any demo partition can be (re-)
    materialised from the UI or the CLI (`stand_in: false` turns this off)."""

    url_template: str = ""
    format: str = DEFAULT_FORMAT
    max_attempts: int = Field(default=4, ge=1)
    backoff_seconds: float = Field(default=2.0, ge=0)
    sleep_requests: float = Field(default=0.0, ge=0, description="pause between HTTP requests")
    rate_limit: Optional[int] = Field(default=None, description="bytes per second")
    cookies_file: Optional[str] = None
    js_runtime: Optional[str] = Field(default=None, description="'node' or 'deno' for full YouTube support")
    socket_timeout: float = Field(
        default=15.0, gt=0, description="seconds a read may wait before the attempt fails (a stalled transfer)"
    )
    max_workers: int = Field(default=0, ge=0, description="parallel downloads within one run (0: 4 per core, 4 to 16)")
    per_host: int = Field(default=8, ge=1, description="at most this many downloads in flight to one host")
    per_host_per_minute: float = Field(
        default=0.0,
        ge=0,
        description="request budget: at most this many downloads started per minute per host "
        "(each is 2-4 HTTP requests); 0: no budget",
    )
    proxy: Optional[str] = Field(
        default=None,
        description="http://, https:// or socks5:// proxy for every request; with credentials, "
        "pass it as an environment variable (dg.EnvVar) so the run config does not show it",
    )
    sleep_interval: float = Field(default=0.0, ge=0, description="seconds to wait before each download")
    max_sleep_interval: float = Field(
        default=0.0, ge=0, description="with sleep_interval: wait a random time up to this instead"
    )
    player_client: list[str] = Field(
        default_factory=list, description="YouTube player clients to try in order, e.g. ['web_safari', 'mweb']"
    )
    po_token: list[str] = Field(
        default_factory=list, description="static proof-of-origin tokens, 'CLIENT.CONTEXT+TOKEN' (yt-dlp's format)"
    )
    pot_provider_url: Optional[str] = Field(
        default=None,
        description="a bgutil-ytdlp-pot-provider HTTP server that mints tokens (the `youtube` extra "
        "installs its yt-dlp plugin), e.g. http://127.0.0.1:4416",
    )
    extractor_args: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict, description="any other yt-dlp extractor arguments: {'youtube': {'lang': ['en']}}"
    )
    min_range_rate: int = Field(
        default=64 * 1024,
        ge=0,
        description="bytes/s under which a range download counts as throttled and the whole file is "
        "fetched instead (YouTube drips ranges of long videos at ~32 KiB/s); 0: never",
    )
    range_grace_seconds: float = Field(
        default=8.0, gt=0, description="how long a range download runs before its rate is judged"
    )
    retry_after_seconds: float = Field(
        default=600.0,
        ge=0,
        description="a transient failure (throttled, error, "
        "stalled) is retried by a run this long after it, doubling with each run "
        "it fails again (at most a day); 0: by every run",
    )

    tail_tolerance_seconds: float = Field(
        default=TAIL_TOLERANCE,
        ge=0,
        description="a segment may end this far "
        "past the end of its media (published 10 s segments sometimes end a few "
        "hundred ms past a video's end); further, or starting past the end, it "
        "is invalid_media",
    )

    stand_in: bool = Field(
        default=True,
        description="serve the demo dataset's videos on 127.0.0.1 when the "
        "AudioSet source is the demo and no URL template is set",
    )

    def _template(self) -> str:
        return self.url_template or os.environ.get("AUDIOCLIP_YOUTUBE_URL_TEMPLATE", "")

    @contextlib.contextmanager
    def serving(self, layout: DataLayout, sources: DatasetSources, log=None) -> Iterator[DownloadOptions]:
        """The download options for one step; with the demo's stand-in server running during it."""
        if self._template() or not self.stand_in or not sources.audioset_is_demo():
            yield self.options()
            return
        from audioclip_core.acquisition.media_server import MediaServer

        videos = sources.audioset(layout) / "videos"
        with MediaServer(videos) as server:
            if log is not None:
                log(f"YouTube stand-in: the demo videos served from {server.url()}")
            yield self.options(server.url("{ytid}.mp4"))

    def options(self, url_template: str = "") -> DownloadOptions:
        return DownloadOptions(
            url_template=url_template or self._template() or YOUTUBE_URL_TEMPLATE,
            format=self.format,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
            sleep_requests=self.sleep_requests,
            rate_limit=self.rate_limit,
            cookies_file=self.cookies_file,
            js_runtime=self.js_runtime,
            socket_timeout=self.socket_timeout,
            tail_tolerance=self.tail_tolerance_seconds,
            proxy=self.proxy,
            sleep_interval=self.sleep_interval,
            max_sleep_interval=self.max_sleep_interval,
            player_client=tuple(self.player_client),
            po_token=tuple(self.po_token),
            pot_provider_url=self.pot_provider_url,
            extractor_args=dict(self.extractor_args),
            min_range_rate=self.min_range_rate,
            range_grace_seconds=self.range_grace_seconds,
        )
