"""Candidate generators and baselines, all behind :class:`control.recs.models.base.Recommender`."""
