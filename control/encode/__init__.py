"""The encoding farm: turns one master file into a published, self-describing file set.

The public entry points are :func:`control.encode.pipeline.ingest` and
:func:`control.encode.probe.probe`; everything else is an implementation detail that the tests
exercise directly.
"""
