"""Strict loaders for interaction logs and catalogues (MovieLens formats and our own CSVs).

Training on a silently mangled file produces a model that looks fine and is wrong, so every loader
refuses bad input with a :class:`DataError` naming the file and the line, and enforces size limits so a
hostile file cannot exhaust memory before it is rejected.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from control.recs.errors import DataError

#: Longest accepted id (user or item); real ids are short, longer ones are garbage or an attack.
MAX_ID_LEN = 128
#: Longest accepted line in any input file, in characters.
MAX_LINE_LEN = 64 * 1024
#: Default ceiling on rows per file; raise it explicitly for larger data sets.
DEFAULT_MAX_ROWS = 50_000_000

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


@dataclass(frozen=True)
class Interactions:
    """One row per (user, item) event, ids kept as the strings the source used."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    ratings: npt.NDArray[np.float64]
    timestamps: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.users)

    def take(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Interactions:
        return Interactions(self.users[mask], self.items[mask], self.ratings[mask], self.timestamps[mask])


@dataclass(frozen=True)
class Title:
    item: str
    title: str
    genres: tuple[str, ...]
    tags: tuple[str, ...] = ()
    year: int | None = None


@dataclass(frozen=True)
class Catalog:
    titles: dict[str, Title] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.titles)


def _check_id(value: str, what: str, where: str) -> str:
    value = value.strip()
    if not value:
        raise DataError(f"{where}: empty {what}")
    if len(value) > MAX_ID_LEN:
        raise DataError(f"{where}: {what} longer than {MAX_ID_LEN} characters")
    if any(ord(c) < 32 for c in value):
        raise DataError(f"{where}: {what} contains control characters")
    return value


def _parse_rating(value: str, where: str) -> float:
    try:
        rating = float(value)
    except ValueError:
        raise DataError(f"{where}: rating {value[:40]!r} is not a number") from None
    if not math.isfinite(rating) or not -1e6 <= rating <= 1e6:
        raise DataError(f"{where}: rating {value[:40]!r} is not a finite number in range")
    return rating


def _parse_timestamp(value: str, where: str) -> int:
    value = value.strip()
    if not value.isdigit() or len(value) > 12:
        raise DataError(f"{where}: timestamp {value[:40]!r} is not a non-negative integer of seconds")
    return int(value)


def _lines(path: Path, encoding: str, max_rows: int) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) with the size limits enforced before anything is parsed."""
    try:
        with path.open(encoding=encoding, newline="") as fh:
            for number, line in enumerate(fh, start=1):
                if len(line) > MAX_LINE_LEN:
                    raise DataError(f"{path}:{number}: line longer than {MAX_LINE_LEN} characters")
                if number > max_rows + 1:
                    raise DataError(f"{path}: more than {max_rows} rows (raise max_rows to accept it)")
                yield number, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None


def _csv_rows(path: Path, header: tuple[str, ...], optional: tuple[str, ...] = (), *, max_rows: int,
              encoding: str = "utf-8") -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ("file:line", row) for a headed CSV whose header must list ``header`` (+ ``optional``)."""
    lines = _lines(path, encoding, max_rows)
    reader = csv.reader(line for _, line in lines)
    try:
        first = next(reader, None)
        if first is None:
            raise DataError(f"{path}: empty file, expected header {','.join(header)}")
        names = [h.strip().lstrip("\ufeff") for h in first]
        missing = [h for h in header if h not in names]
        unknown = [h for h in names if h not in header and h not in optional]
        if missing or unknown:
            raise DataError(f"{path}:1: header {','.join(names)[:200]!r} must be {','.join(header)}"
                            + (f" (optional: {','.join(optional)})" if optional else ""))
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(names):
                raise DataError(f"{where}: expected {len(names)} fields, found {len(row)}")
            yield where, dict(zip(names, row, strict=True))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _build(users: list[str], items: list[str], ratings: list[float], stamps: list[int]) -> Interactions:
    return Interactions(np.array(users, dtype=np.str_), np.array(items, dtype=np.str_),
                        np.array(ratings, dtype=np.float64), np.array(stamps, dtype=np.int64))


def load_interactions_csv(path: Path, *, max_rows: int = DEFAULT_MAX_ROWS,
                          columns: tuple[str, str, str, str] = ("user", "item", "rating", "timestamp")
                          ) -> Interactions:
    """Read ``user,item,rating,timestamp`` (our format) or any CSV with those four columns renamed."""
    u_col, i_col, r_col, t_col = columns
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    for where, row in _csv_rows(path, columns, max_rows=max_rows):
        users.append(_check_id(row[u_col], "user", where))
        items.append(_check_id(row[i_col], "item", where))
        ratings.append(_parse_rating(row[r_col], where))
        stamps.append(_parse_timestamp(row[t_col], where))
    return _build(users, items, ratings, stamps)


def _split_list(value: str) -> tuple[str, ...]:
    parts = [p.strip() for p in value.split("|")]
    return tuple(p for p in parts if p and p != "(no genres listed)")


def _year_of(title: str) -> int | None:
    match = _YEAR.search(title)
    return int(match.group(1)) if match else None


def load_catalog_csv(path: Path, *, max_rows: int = DEFAULT_MAX_ROWS, item_col: str = "item") -> Catalog:
    """Read ``item,title,genres[,tags]`` with ``|``-separated genres and tags."""
    titles: dict[str, Title] = {}
    for where, row in _csv_rows(path, (item_col, "title", "genres"), ("tags",), max_rows=max_rows):
        item = _check_id(row[item_col], "item", where)
        if item in titles:
            raise DataError(f"{where}: item {item!r} listed twice")
        name = row["title"].strip()
        titles[item] = Title(item, name, _split_list(row["genres"]), _split_list(row.get("tags", "")),
                             _year_of(name))
    return Catalog(titles)


def _add_tags(catalog: Catalog, path: Path, max_rows: int) -> Catalog:
    tags: dict[str, list[str]] = {}
    for where, row in _csv_rows(path, ("userId", "movieId", "tag", "timestamp"), max_rows=max_rows):
        item = _check_id(row["movieId"], "item", where)
        tag = row["tag"].strip().lower()
        if tag:
            tags.setdefault(item, []).append(tag[:64])
    titles = {
        item: Title(t.item, t.title, t.genres, tuple(sorted(set(t.tags) | set(tags.get(item, ())))), t.year)
        for item, t in catalog.titles.items()
    }
    return Catalog(titles)


def load_movielens(root: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> tuple[Interactions, Catalog]:
    """Load ml-latest* (ratings.csv, movies.csv, optional tags.csv) or ml-100k (u.data, u.item)."""
    if (root / "ratings.csv").is_file():
        ratings = load_interactions_csv(root / "ratings.csv", max_rows=max_rows,
                                        columns=("userId", "movieId", "rating", "timestamp"))
        catalog = load_catalog_csv(root / "movies.csv", max_rows=max_rows, item_col="movieId")
        if (root / "tags.csv").is_file():
            catalog = _add_tags(catalog, root / "tags.csv", max_rows)
        return ratings, catalog
    if (root / "u.data").is_file():
        return _load_ml100k_ratings(root / "u.data", max_rows), _load_ml100k_items(root / "u.item", max_rows)
    raise DataError(f"{root}: no MovieLens data here (expected ratings.csv + movies.csv, or u.data + u.item)")


def _load_ml100k_ratings(path: Path, max_rows: int) -> Interactions:
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    for number, line in _lines(path, "latin-1", max_rows):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 4:
            raise DataError(f"{where}: expected 4 tab-separated fields, found {len(fields)}")
        users.append(_check_id(fields[0], "user", where))
        items.append(_check_id(fields[1], "item", where))
        ratings.append(_parse_rating(fields[2], where))
        stamps.append(_parse_timestamp(fields[3], where))
    return _build(users, items, ratings, stamps)


def _load_ml100k_items(path: Path, max_rows: int) -> Catalog:
    titles: dict[str, Title] = {}
    n_genres = len(_ML100K_GENRES)
    for number, line in _lines(path, "latin-1", max_rows):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        fields = line.rstrip("\r\n").split("|")
        if len(fields) != 5 + n_genres:
            raise DataError(f"{where}: expected {5 + n_genres} '|'-separated fields, found {len(fields)}")
        item = _check_id(fields[0], "item", where)
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{where}: genre flags must be 0 or 1")
        genres = tuple(g for g, f in zip(_ML100K_GENRES, flags, strict=True) if f == "1" and g != "unknown")
        date = fields[2].strip()
        year = int(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else None
        titles[item] = Title(item, fields[1].strip(), genres, (), year)
    return Catalog(titles)


def load_user_list(path: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> list[str]:
    """Read the users to recommend for: one id per line, an optional ``user`` header."""
    users: list[str] = []
    seen: set[str] = set()
    for number, line in _lines(path, "utf-8", max_rows):
        value = line.strip()
        if not value or (number == 1 and value.lower() == "user"):
            continue
        user = _check_id(value, "user", f"{path}:{number}")
        if user not in seen:
            seen.add(user)
            users.append(user)
    return users
