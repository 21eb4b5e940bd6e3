"""Shared fixtures: a small synthetic viewing log with real structure, and the MovieLens path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from control.recs.data import Catalog, Interactions, Title
from control.recs.dataset import TrainData, build

ML_SMALL = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ml-latest-small"
GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance")


def synthetic(
    n_users: int = 160, n_items: int = 240, per_user: int = 30, seed: int = 7
) -> tuple[Interactions, Catalog]:
    """Users belong to one of six taste groups; each group mostly watches titles of its genre, with a
    popularity skew and 15% off-taste noise, over a timeline where each user is active in one era."""
    rng = np.random.default_rng(seed)
    item_genre = np.arange(n_items) % len(GENRES)
    pop = 1.0 / (1.0 + np.arange(n_items)) ** 0.6
    titles = {
        f"t{i}": Title(f"t{i}", f"Title {i} ({1990 + i % 30})", (GENRES[item_genre[i]],),
                       (f"tag{item_genre[i]}", f"mood{i % 4}"), 1990 + i % 30)
        for i in range(n_items)
    }
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    for u in range(n_users):
        group = u % len(GENRES)
        liked = np.where(item_genre == group, 1.0, 0.15) * pop
        chosen = rng.choice(n_items, size=per_user, replace=False, p=liked / liked.sum())
        start = 1_000_000_000 + int(rng.integers(0, 300)) * 86_400
        for j, i in enumerate(chosen):
            users.append(f"u{u}")
            items.append(f"t{i}")
            ratings.append(float(rng.choice([3.0, 4.0, 4.5, 5.0], p=[0.2, 0.3, 0.2, 0.3])))
            stamps.append(start + j * 3_600)
    inter = Interactions(np.array(users), np.array(items), np.array(ratings), np.array(stamps, dtype=np.int64))
    return inter, Catalog(titles)


@pytest.fixture(scope="session")
def synth() -> tuple[Interactions, Catalog]:
    return synthetic()


@pytest.fixture(scope="session")
def synth_data(synth: tuple[Interactions, Catalog]) -> TrainData:
    inter, catalog = synth
    return build(inter, catalog)


def write_movielens(root: Path, inter: Interactions, catalog: Catalog) -> Path:
    """The synthetic log in ml-latest format, for CLI tests."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "ratings.csv").open("w") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        for u, i, r, t in zip(inter.users, inter.items, inter.ratings, inter.timestamps, strict=True):
            fh.write(f"{u},{i},{r},{t}\n")
    with (root / "movies.csv").open("w") as fh:
        fh.write("movieId,title,genres\n")
        for t in catalog.titles.values():
            fh.write(f'{t.item},"{t.title}",{"|".join(t.genres)}\n')
    return root


Synthesize = Callable[..., tuple[Interactions, Catalog]]
WriteMovielens = Callable[[Path, Interactions, Catalog], Path]


@pytest.fixture(scope="session")
def make_synthetic() -> Synthesize:
    """The generator itself, for tests that need a log of another size (importlib mode forbids importing conftest)."""
    return synthetic


@pytest.fixture(scope="session")
def movielens_writer() -> WriteMovielens:
    return write_movielens
