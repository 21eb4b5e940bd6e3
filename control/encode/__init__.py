"""The encoding farm: turns one master file into a published, self-describing file set.

Interface for the control API and the CLI (everything else is internal)::

    from control.encode.pipeline import ingest
    from control.encode.probe import probe
    from control.encode.spec import IngestSpec

    info = probe(path)                      # ProbeResult, or a BadMaster subclass (HTTP 400, one line)
    manifest = ingest(master, origin_root, keys_dir, IngestSpec(title_id=..., name=..., ...),
                      progress=lambda stage, fraction: ..., cancel=threading.Event())

``ingest`` is blocking (run it with ``asyncio.to_thread``) and fans out to spawned worker
processes.  It publishes ``origin_root/<title_id>/`` with a single rename; on any error or
cancellation nothing is visible and no key file exists.  Errors are :mod:`control.encode.errors`
types (all ``shared.errors.NearcastError``): ``BadMaster``/``BadSpec`` 400, ``TitleExists`` 409,
``IngestCancelled`` 499, ``EncodeFailed`` 500.  Progress stages: probe, ladder, encode, package,
done, with a fraction of the whole job in 0..1.

A published title::

    fileset.json                 FileSetManifest (control.encode.fileset): every file, size, sha256,
                                 rendition, kind; ladder rungs and measured (bitrate, PSNR) points
    master.m3u8                  HLS multivariant playlist (+ I-frame variants unless AES-128)
    manifest.mpd                 DASH, static, SegmentTemplate + SegmentTimeline (absent for AES-128)
    <rendition>/init.mp4         CMAF init segment;  <rendition>/seg_NNNNN.m4s  media segments
    <rendition>/playlist.m3u8    HLS media playlist; <rendition>/iframes.m3u8  I-frame playlist
    audio_aac/...                AAC-LC stereo rendition
    artwork/candidate_NN.jpg     artwork candidates (+ candidates.json with times and scores)
    thumbs/sprite_NNN.jpg        5x5 thumbnail sprites (+ thumbs.vtt for scrubbing)

Keys: ``keys_dir/<title_id>.json`` (0600), format in :mod:`control.encode.crypto`; the ClearKey
license exchange is :func:`control.encode.clearkey.license_response`.
"""
