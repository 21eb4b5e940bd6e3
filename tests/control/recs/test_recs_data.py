"""Loaders: the formats we promise, and clear refusals (file and line) for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from control.recs.data import (
    MAX_LINE_LEN,
    load_catalog_csv,
    load_interactions_csv,
    load_movielens,
    load_user_list,
)
from control.recs.dataset import build, history_rows
from control.recs.errors import DataError


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_interactions_csv_round_trip(tmp_path: Path) -> None:
    f = _write(tmp_path / "i.csv", "user,item,rating,timestamp\nu1,a,4.5,10\nu2,b,1,20\n\n")
    inter = load_interactions_csv(f)
    assert inter.users.tolist() == ["u1", "u2"]
    assert inter.ratings.tolist() == [4.5, 1.0]
    assert inter.timestamps.dtype == np.int64


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("user,item,score,timestamp\nu,a,1,1\n", ":1: header"),
        ("user,item,rating,timestamp\nu,a,1\n", ":2: expected 4 fields"),
        ("user,item,rating,timestamp\nu,a,nan,1\n", ":2: rating 'nan' is not a finite"),
        ("user,item,rating,timestamp\nu,a,five,1\n", ":2: rating 'five' is not a number"),
        ("user,item,rating,timestamp\nu,a,1,-5\n", ":2: timestamp '-5'"),
        ("user,item,rating,timestamp\n,a,1,5\n", ":2: empty user"),
        ("user,item,rating,timestamp\nu,a,1,5\nu," + "x" * 300 + ",1,5\n", ":3: item longer than"),
        ("user,item,rating,timestamp\nu\x01,a,1,5\n", ":2: user contains control characters"),
        ("", "empty file"),
    ],
)
def test_malformed_interactions_name_file_and_line(tmp_path: Path, body: str, needle: str) -> None:
    f = _write(tmp_path / "bad.csv", body)
    with pytest.raises(DataError, match="bad.csv") as err:
        load_interactions_csv(f)
    assert needle in str(err.value)


def test_hostile_inputs_are_refused(tmp_path: Path) -> None:
    binary = _write(tmp_path / "bin.csv", b"user,item,rating,timestamp\n\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="not valid utf-8"):
        load_interactions_csv(binary)
    long_line = _write(tmp_path / "long.csv", "user,item,rating,timestamp\n" + "u," * (MAX_LINE_LEN // 2) + "\n")
    with pytest.raises(DataError, match="longer than"):
        load_interactions_csv(long_line)
    many = _write(tmp_path / "many.csv", "user,item,rating,timestamp\n" + "u,a,1,1\n" * 20)
    with pytest.raises(DataError, match="more than 10 rows"):
        load_interactions_csv(many, max_rows=10)
    with pytest.raises(DataError, match="no such file"):
        load_interactions_csv(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a directory"):
        load_interactions_csv(tmp_path)


def test_catalog_csv_with_optional_tags(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.csv", 'item,title,genres,tags\na,"Heat, The (1995)",Action|Crime,heist|la\n'
                                   "b,No Year,(no genres listed),\n")
    cat = load_catalog_csv(f)
    assert cat.titles["a"].genres == ("Action", "Crime")
    assert cat.titles["a"].tags == ("heist", "la")
    assert cat.titles["a"].year == 1995
    assert cat.titles["b"].genres == () and cat.titles["b"].year is None


def test_catalog_rejects_duplicates_and_unknown_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=":3: item 'a' listed twice"):
        load_catalog_csv(_write(tmp_path / "d.csv", "item,title,genres\na,A,X\na,B,Y\n"))
    with pytest.raises(DataError, match="header"):
        load_catalog_csv(_write(tmp_path / "e.csv", "item,title,genres,price\na,A,X,3\n"))


def test_movielens_latest_layout(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,2.0,200\n")
    _write(tmp_path / "movies.csv", 'movieId,title,genres\n10,"Ten (1999)",Drama\n20,Twenty (2001),Comedy|Drama\n')
    _write(tmp_path / "tags.csv", "userId,movieId,tag,timestamp\n1,10,Dark,5\n2,10,dark,6\n")
    inter, cat = load_movielens(tmp_path)
    assert len(inter) == 2
    assert cat.titles["10"].tags == ("dark",)
    assert cat.titles["20"].genres == ("Comedy", "Drama")


def test_movielens_100k_layout(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t10\t5\t881250949\n2\t10\t3\t881250950\n")
    flags = ["0"] * 19
    flags[8] = "1"  # Drama
    _write(tmp_path / "u.item", "10|Ten (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    inter, cat = load_movielens(tmp_path)
    assert inter.items.tolist() == ["10", "10"]
    assert cat.titles["10"].genres == ("Drama",) and cat.titles["10"].year == 1995
    _write(tmp_path / "u.data", "1\t10\t5\n")
    with pytest.raises(DataError, match=r"u\.data:1: expected 4 tab-separated"):
        load_movielens(tmp_path)


def test_movielens_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MovieLens data"):
        load_movielens(tmp_path)


def test_user_list_and_history_rows(tmp_path: Path) -> None:
    users = load_user_list(_write(tmp_path / "u.txt", "user\nu1\nnew\nu1\n"))
    assert users == ["u1", "new"]
    inter = load_interactions_csv(_write(tmp_path / "i.csv", "user,item,rating,timestamp\nu1,a,5,1\nu1,a,4,9\n"))
    cat = load_catalog_csv(_write(tmp_path / "c.csv", "item,title,genres\na,A,X\nb,B,Y\n"))
    data = build(inter, cat)
    assert data.matrix.nnz == 1 and data.times[0, 0] == 9.0  # duplicates collapse, latest time wins
    rows = history_rows(data, users)
    assert rows.shape == (2, 2) and rows[0, 0] == 1.0 and rows[1].nnz == 0
