"""The click commands through CliRunner: real files in, real files and tables out, clean failures."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from control.recs.bundle import load_bundle
from control.recs.cli import eval_command, offline_command, train_command
from control.recs.data import Catalog, Interactions

Synthesize = Callable[..., tuple[Interactions, Catalog]]


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory: pytest.TempPathFactory, make_synthetic: Synthesize,
           movielens_writer: Callable[[Path, Interactions, Catalog], Path]) -> Path:
    inter, catalog = make_synthetic(n_users=90, n_items=120, per_user=25)
    return movielens_writer(tmp_path_factory.mktemp("ml"), inter, catalog)


def test_eval_prints_json_for_every_model_and_protocol(ml_dir: Path) -> None:
    result = CliRunner().invoke(eval_command, ["--data", str(ml_dir), "--grid", "small", "--json", "--quiet",
                                               "--protocol", "random", "--k", "5", "--k", "10"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["model"] for r in rows} == {"most_popular", "item_knn", "ease", "als", "pipeline"}
    for r in rows:
        assert set(r["metrics"]) == {"5", "10"}
        assert 0.0 <= r["metrics"]["10"]["ndcg"] <= 1.0


def test_eval_table_on_the_terminal(ml_dir: Path) -> None:
    result = CliRunner().invoke(eval_command, ["--data", str(ml_dir), "--grid", "small", "--quiet",
                                               "--protocol", "temporal"])
    assert result.exit_code == 0, result.output
    assert "NDCG@10" in result.output and "Recall@20" in result.output
    assert result.output.count("temporal") == 5


def test_eval_refuses_bad_data_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,oops,3\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n2,X,Drama\n")
    result = CliRunner().invoke(eval_command, ["--data", str(tmp_path), "--quiet"])
    assert result.exit_code != 0
    assert "ratings.csv:2: rating 'oops' is not a number" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(eval_command, ["--data", str(empty)])
    assert result.exit_code != 0 and "no MovieLens data" in result.output


@pytest.fixture
def offline_inputs(tmp_path: Path, make_synthetic: Synthesize) -> tuple[Path, Path, Path]:
    inter, catalog = make_synthetic(n_users=80, n_items=100, per_user=20, seed=11)
    train = tmp_path / "train.csv"
    with train.open("w") as fh:
        fh.write("user,item,rating,timestamp\n")
        for u, i, r, t in zip(inter.users, inter.items, inter.ratings, inter.timestamps, strict=True):
            fh.write(f"{u},{i},{r},{t}\n")
    cat = tmp_path / "catalog.csv"
    with cat.open("w") as fh:
        fh.write("item,title,genres,tags\n")
        for t in catalog.titles.values():
            fh.write(f'{t.item},"{t.title}",{"|".join(t.genres)},{"|".join(t.tags)}\n')
    users = tmp_path / "users.txt"
    users.write_text("user\nu1\nu2\nnobody\n")
    return train, cat, users


def test_offline_writes_top_k_without_training_items(tmp_path: Path,
                                                     offline_inputs: tuple[Path, Path, Path]) -> None:
    train, cat, users = offline_inputs
    out = tmp_path / "recs.csv"
    result = CliRunner().invoke(offline_command, ["--train", str(train), "--catalog", str(cat), "--users", str(users),
                                                  "--k", "7", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["user", "rank", "item", "score"]
    seen: dict[str, set[str]] = {}
    with train.open() as fh:
        for r in csv.DictReader(fh):
            seen.setdefault(r["user"], set()).add(r["item"])  # every rating, low ones too
    for user in ("u1", "u2", "nobody"):
        mine = [r for r in rows if r["user"] == user]
        assert [int(r["rank"]) for r in mine] == list(range(1, 8))
        assert not {r["item"] for r in mine} & seen.get(user, set())
        assert len({r["item"] for r in mine}) == 7


@pytest.mark.parametrize(
    ("which", "body", "needle"),
    [
        ("train", "user,item,rating\nu1,a,5\n", "header"),
        ("train", "user,item,rating,timestamp\nu1,a,5,yesterday\n", "train.csv:2: timestamp"),
        ("catalog", "item,title\na,A\n", "catalog.csv:1: header"),
        ("users", "u1\n" + "x" * 200 + "\n", "users.txt:2: user longer than"),
    ],
)
def test_offline_refuses_malformed_inputs(tmp_path: Path, offline_inputs: tuple[Path, Path, Path], which: str,
                                          body: str, needle: str) -> None:
    train, cat, users = offline_inputs
    {"train": train, "catalog": cat, "users": users}[which].write_text(body)
    out = tmp_path / "recs.csv"
    result = CliRunner().invoke(offline_command, ["--train", str(train), "--catalog", str(cat), "--users", str(users),
                                                  "--out", str(out), "--quiet"])
    assert result.exit_code != 0
    assert needle in result.output
    assert not out.exists()


def test_train_writes_a_loadable_bundle_once(ml_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(train_command, ["--data", str(ml_dir), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    pipeline = load_bundle(out)
    assert pipeline.n_items == 120
    again = CliRunner().invoke(train_command, ["--data", str(ml_dir), "--out", str(out), "--quiet"])
    assert again.exit_code != 0 and "already exists" in again.output
