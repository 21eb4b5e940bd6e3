"""The ABR player: downloads an HLS title segment by segment like a real player would.

It keeps a buffer model on the real clock (playback starts once the first segment is in; the buffer
drains while playing; an empty buffer is a stall until the next segment lands), asks its ABR rule
for each next segment, shapes its downloads to a throughput trace, and on any error or timeout fails
over to the next steered URL, resuming at the same segment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from shared.errors import NearcastError

from .algorithms import BolaRule, Observation, ThroughputRule, make_rule
from .hls import MasterPlaylist, MediaPlaylist, PlaylistError, Variant, parse_master, parse_media, resolve
from .qoe import QoeLog
from .traces import Shaper, Trace

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class PlaybackFailed(NearcastError):
    http_status = 502


@dataclass
class PlayerOptions:
    abr: str = "throughput"
    trace: Trace | None = None
    codecs: tuple[str, ...] = ("avc1",)
    timeout_s: float = 4.0
    max_buffer_s: float = 30.0
    client_ip: str | None = None
    max_segments: int | None = None
    on_segment: Callable[[int, Variant, QoeLog], None] | None = None


@dataclass
class _Source:
    master_url: str
    master: MasterPlaylist
    variants: list[Variant]
    media: dict[str, MediaPlaylist] = field(default_factory=dict)
    audio_media: MediaPlaylist | None = None
    audio_uri: str | None = None


class Player:
    def __init__(self, urls: list[str], options: PlayerOptions | None = None) -> None:
        if not urls:
            raise PlaybackFailed("no URLs to play")
        self.urls = urls
        self.options = options or PlayerOptions()
        self.rule: ThroughputRule | BolaRule = make_rule(self.options.abr)
        self.qoe = QoeLog()
        self.shaper = Shaper(self.options.trace)
        self.url_index = 0
        self.served_by: list[int] = []  # URL index that served each segment

    # -- HTTP ------------------------------------------------------------------------------------------
    async def _fetch(self, http: aiohttp.ClientSession, url: str, *, shaped: bool = True) -> bytes:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.timeout_s,
                                        sock_read=self.options.timeout_s)
        async with http.get(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise PlaybackFailed(f"GET {url}: HTTP {resp.status}")
            parts = []
            async for chunk in resp.content.iter_chunked(CHUNK):
                if shaped:
                    await self.shaper.consume(len(chunk))
                parts.append(chunk)
            return b"".join(parts)

    async def _open_source(self, http: aiohttp.ClientSession, index: int) -> _Source:
        url = self.urls[index]
        master = parse_master(await self._fetch(http, url, shaped=False))
        variants = sorted((v for v in master.variants
                           if not self.options.codecs or any(v.codecs.startswith(c) or f",{c}" in v.codecs
                                                            for c in self.options.codecs)),
                          key=lambda v: v.bandwidth)
        if not variants:
            raise PlaylistError(f"no variant with codecs {','.join(self.options.codecs)} in {url}")
        source = _Source(url, master, variants)
        for v in variants:
            source.media[v.uri] = parse_media(await self._fetch(http, resolve(url, v.uri), shaped=False))
        audio = master.audio_for(variants[0])
        if audio is not None and audio.uri:
            source.audio_uri = audio.uri
            source.audio_media = parse_media(await self._fetch(http, resolve(url, audio.uri), shaped=False))
        return source

    # -- playback --------------------------------------------------------------------------------------
    async def play(self) -> QoeLog:
        connector = aiohttp.TCPConnector(local_addr=(self.options.client_ip, 0) if self.options.client_ip else None,
                                         limit=4)
        async with aiohttp.ClientSession(connector=connector) as http:
            return await self._play(http)

    async def _failover(self, http: aiohttp.ClientSession, why: str) -> _Source:
        while True:
            self.qoe.errors += 1
            if self.url_index + 1 >= len(self.urls):
                raise PlaybackFailed(f"all {len(self.urls)} sources failed; last error: {why}")
            self.url_index += 1
            self.qoe.failovers += 1
            log.warning("failing over to source %d (%s): %s", self.url_index, self.urls[self.url_index], why)
            try:
                return await self._open_source(http, self.url_index)
            except (aiohttp.ClientError, TimeoutError, PlaybackFailed, PlaylistError) as exc:
                why = str(exc) or type(exc).__name__

    async def _play(self, http: aiohttp.ClientSession) -> QoeLog:
        t0 = time.monotonic()
        source: _Source | None = None
        try:
            source = await self._open_source(http, 0)
        except (aiohttp.ClientError, TimeoutError, PlaybackFailed, PlaylistError) as exc:
            source = await self._failover(http, str(exc) or type(exc).__name__)
        bitrates = [v.bandwidth for v in source.variants]
        count = len(source.media[source.variants[0].uri].segments)
        if self.options.max_segments is not None:
            count = min(count, self.options.max_segments)
        buffer_s = 0.0
        playing = False
        last_event = t0
        last_quality: int | None = None
        inits: dict[tuple[int, str], bool] = {}
        n = 0
        while n < count:
            obs = Observation(buffer_s, source.media[source.variants[0].uri].segments[n].duration, last_quality)
            q = self.rule.choose(bitrates, obs)
            variant = source.variants[q]
            media = source.media[variant.uri]
            segment = media.segments[n]
            base = resolve(source.master_url, variant.uri)
            started = time.monotonic()
            try:
                nbytes = 0
                if media.init_uri and not inits.get((self.url_index, variant.uri)):
                    nbytes += len(await self._fetch(http, resolve(base, media.init_uri)))
                    inits[(self.url_index, variant.uri)] = True
                nbytes += len(await self._fetch(http, resolve(base, segment.uri)))
                if source.audio_media is not None and source.audio_uri and n < len(source.audio_media.segments):
                    abase = resolve(source.master_url, source.audio_uri)
                    if source.audio_media.init_uri and not inits.get((self.url_index, "audio")):
                        nbytes += len(await self._fetch(http, resolve(abase, source.audio_media.init_uri)))
                        inits[(self.url_index, "audio")] = True
                    nbytes += len(await self._fetch(http, resolve(abase, source.audio_media.segments[n].uri)))
            except (aiohttp.ClientError, TimeoutError, PlaybackFailed) as exc:
                source = await self._failover(http, str(exc) or type(exc).__name__)
                continue
            now = time.monotonic()
            self.rule.record_download(nbytes, now - started)
            self.qoe.bytes += nbytes
            # Buffer model: drain since the last event while playing; an empty buffer is a stall.
            stall = 0.0
            if playing:
                elapsed = now - last_event
                if elapsed > buffer_s:
                    stall = elapsed - buffer_s
                    buffer_s = 0.0
                else:
                    buffer_s -= elapsed
            buffer_s += segment.duration
            last_event = now
            if not playing:
                playing = True
                self.qoe.startup_delay_s = now - t0
            self.qoe.segment(variant.bandwidth, stall)
            self.qoe.played_s += segment.duration
            self.served_by.append(self.url_index)
            if self.options.on_segment is not None:
                self.options.on_segment(n, variant, self.qoe)
            last_quality = q
            n += 1
            if buffer_s > self.options.max_buffer_s:
                wait = buffer_s - self.options.max_buffer_s
                await asyncio.sleep(wait)
                buffer_s -= wait
                last_event = time.monotonic()
        return self.qoe
