"""Click commands for data scientists: ``eval`` (mounted as ``nearcast model eval``), ``offline``
(``nearcast recs offline``) and ``train`` (a local bundle build for ``nearcast model train``).

Thin shells: parse, build the same core objects the control plane uses, call one function, print.
Domain errors become one-line ``click.ClickException`` messages and a non-zero exit.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import numpy.typing as npt

from control.recs.bundle import save_bundle
from control.recs.data import (
    Catalog,
    Interactions,
    load_catalog_csv,
    load_interactions_csv,
    load_movielens,
    load_user_list,
)
from control.recs.dataset import build, history_rows, restrict
from control.recs.evaluate import EvalConfig, Grids, run, table
from control.recs.pipeline import Pipeline, PipelineConfig
from control.recs.splits import Protocol, positives
from shared.errors import NearcastError


def _say(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    return say


def load_data_dir(path: Path) -> tuple[Interactions, Catalog]:
    """MovieLens (ml-latest*, ml-100k) or our export (``interactions.csv`` + ``catalog.csv``) in one directory."""
    if (path / "interactions.csv").is_file():
        return load_interactions_csv(path / "interactions.csv"), load_catalog_csv(path / "catalog.csv")
    return load_movielens(path)


SMALL_GRIDS = Grids(ease=[{"lam": 100.0}, {"lam": 300.0}], item_knn=[{"neighbours": 100, "shrink": 10.0}],
                    als_reg=(20.0,), als_alpha=(5.0,), als_factors=(64,), als_iterations=8)


@click.command("eval")
@click.option("--data", "data_path", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="MovieLens directory (ratings.csv+movies.csv[+tags.csv] or u.data+u.item) or an export "
                   "directory holding interactions.csv + catalog.csv.")
@click.option("--policy", type=click.Choice(["uniform", "first", "linucb"]), default=None,
              help="Off-policy evaluation of an artwork policy instead: replay, IPS, SNIPS and doubly robust "
                   "estimates from the logs in --logs.")
@click.option("--logs", "logs_path", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="With --policy: a `nearcast events export` directory (choices.csv + plays.csv).")
@click.option("--protocol", type=click.Choice(["random", "temporal", "both"]), default="both", show_default=True,
              help="random: per-user 80/20 of positives; temporal: leave the latest positive out.")
@click.option("--k", "ks", type=click.IntRange(1, 1000), multiple=True, default=(10, 20), show_default=True,
              help="Cut-offs to report (repeatable); the table shows the smallest and the largest.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits and models.")
@click.option("--min-rating", type=float, default=4.0, show_default=True, help="Ratings at or above are positives.")
@click.option("--grid", type=click.Choice(["full", "small"]), default="full", show_default=True,
              help="Baseline tuning grid; 'small' is for smoke tests, not for published figures.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def eval_command(data_path: Path | None, policy: str | None, logs_path: Path | None, protocol: str,
                 ks: tuple[int, ...], seed: int, min_rating: float, grid: str, as_json: bool, quiet: bool) -> None:
    """Compare our pipeline with most-popular, item-kNN, EASE and tuned ALS on the same splits
    (--data), or estimate an artwork policy's value from logged choices (--policy with --logs)."""
    if policy is not None:
        if logs_path is None:
            raise click.UsageError("--policy needs --logs DIR (from `nearcast events export`)")
        from control.policy_eval import evaluate_policy
        from control.policy_eval import table as policy_table

        try:
            report = evaluate_policy(logs_path, policy, seed=seed)
        except NearcastError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(json.dumps(report.as_json(), indent=2) if as_json else policy_table(report))
        return
    if data_path is None:
        raise click.UsageError("give --data DIR (or --policy with --logs)")
    protocols = (Protocol.RANDOM, Protocol.TEMPORAL) if protocol == "both" else (Protocol(protocol),)
    config = EvalConfig(protocols=protocols, k=tuple(sorted(set(ks))), seed=seed, min_rating=min_rating,
                        grids=SMALL_GRIDS if grid == "small" else Grids())
    if grid == "small":
        config = replace(config, pipeline=PipelineConfig(folds=2, als={"factors": 64, "iterations": 8}))
    try:
        interactions, catalog = load_data_dir(data_path)
        results = run(interactions, catalog, config, progress=_say(quiet))
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results], indent=2))
    else:
        click.echo(table(results, config.k))


@click.command("offline")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Interaction CSV: user,item,rating,timestamp.")
@click.option("--catalog", "catalog_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Catalog CSV: item,title,genres[,tags] ('|'-separated lists).")
@click.option("--users", "users_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Users to recommend for, one per line.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Titles per user.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output CSV: user,rank,item,score.")
@click.option("--min-rating", type=float, default=4.0, show_default=True,
              help="Ratings at or above train the models; every training item is excluded regardless.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def offline_command(train_path: Path, catalog_path: Path, users_path: Path, k: int, out_path: Path,
                    min_rating: float, seed: int, quiet: bool) -> None:
    """Fit the production pipeline on a CSV and write the top-K titles for each listed user."""
    say = _say(quiet)
    try:
        interactions = load_interactions_csv(train_path)
        catalog = load_catalog_csv(catalog_path)
        users = load_user_list(users_path)
        pos = positives(interactions, min_rating)
        if len(pos) == 0:
            raise click.ClickException(f"{train_path}: no interaction is rated >= {min_rating}")
        everything = build(interactions, catalog)
        data = restrict(everything, pos)
        pipeline = Pipeline(PipelineConfig(seed=seed)).fit(data, progress=say)
        idx, scores = pipeline.recommend(history_rows(data, users), history_rows(data, users, data.times), k,
                                         exclude=history_rows(everything, users))
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
    _write_csv(out_path, users, data.item_ids, idx, scores)
    say(f"wrote {len(users)} users x {k} titles to {out_path}")


@click.command("train")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="MovieLens directory or an export directory (interactions.csv + catalog.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Bundle directory to create (must not exist yet).")
@click.option("--protocol", type=click.Choice(["random", "temporal"]), default="temporal", show_default=True,
              help="How the ranker's training lists are carved: temporal imitates serving (predict what comes next).")
@click.option("--min-rating", type=float, default=4.0, show_default=True, help="Ratings at or above are positives.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def train_command(data_path: Path, out_dir: Path, protocol: str, min_rating: float, seed: int, quiet: bool) -> None:
    """Fit the full pipeline on all the data and save it as a bundle (ranker, tables, feature spec)."""
    say = _say(quiet)
    if out_dir.exists():
        raise click.ClickException(f"{out_dir}: already exists; bundles are never overwritten")
    try:
        interactions, catalog = load_data_dir(data_path)
        pos = positives(interactions, min_rating)
        if len(pos) == 0:
            raise click.ClickException(f"{data_path}: no interaction is rated >= {min_rating}")
        data = build(pos, catalog)
        pipeline = Pipeline(PipelineConfig(seed=seed)).fit(data, Protocol(protocol), progress=say)
        staging = out_dir.with_name(f".{out_dir.name}.partial")
        save_bundle(pipeline, staging)
        staging.rename(out_dir)
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
    say(f"bundle written to {out_dir}")


def _write_csv(path: Path, users: list[str], item_ids: tuple[str, ...], idx: npt.NDArray[np.intp],
               scores: npt.NDArray[np.float32]) -> None:
    """Write atomically: a reader never sees half a file, and a failure leaves the old file in place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["user", "rank", "item", "score"])
            for row, user in enumerate(users):
                for rank, (i, s) in enumerate(zip(idx[row], scores[row], strict=True), start=1):
                    if np.isfinite(s):
                        writer.writerow([user, rank, item_ids[i], f"{float(s):.6g}"])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:  # pragma: no cover - convenience for `python -m control.recs.cli`
    group = click.Group(commands={"eval": eval_command, "offline": offline_command, "train": train_command})
    group(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
