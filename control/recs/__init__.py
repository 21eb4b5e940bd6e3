"""The recommendation engine's offline core: data, splits, models, ranker, evaluation.

The control plane's events endpoint and rows service call into this package; nothing here does
network or database I/O, so every piece can be trained and measured from files alone.
"""
