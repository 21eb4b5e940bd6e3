"""Catalog metadata per title: genres, cast, directors, year, tags, description and artwork variants.

Entries come from three places and merge field by field (a later source only fills or replaces the
fields it names): the ingest job (name, genres, the artwork candidates it extracted), an operator's
catalog file (``nearcast catalog load FILE``: CSV ``item,title,genres[,tags,cast,directors,year,
description]`` with ``|``-separated lists, the recommender's own catalog format, or JSON lines of
entries), and ``PUT /v1/catalog``.  Everything is validated and bounded here; the store keeps the
JSON.  A catalog entry alone does not make a title playable: rows only offer titles that are also
published in the origin.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from shared.errors import InvalidInput
from shared.ids import check_id, is_valid_id

MAX_LIST: Final = 64
MAX_TEXT: Final = 200
MAX_DESCRIPTION: Final = 4000
MAX_ENTRIES: Final = 100_000
MAX_FILE_BYTES: Final = 64 << 20
LIST_FIELDS: Final = ("genres", "cast", "directors", "tags")
FIELDS: Final = frozenset({"title_id", "name", *LIST_FIELDS, "year", "description", "artwork"})


@dataclass(frozen=True)
class CatalogEntry:
    title_id: str
    name: str = ""
    genres: tuple[str, ...] = ()
    cast: tuple[str, ...] = ()
    directors: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    year: int | None = None
    description: str = ""
    artwork: tuple[str, ...] = ()  # variant ids: artwork/<id>.jpg in the title's file set

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def merged(self, fields: Mapping[str, Any]) -> CatalogEntry:
        """This entry with ``fields`` (already validated) replacing the ones they name."""
        return replace(self, **{k: v for k, v in fields.items() if k != "title_id"})


def _text(value: Any, key: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.replace("\n", " ").isprintable():
        raise InvalidInput(f"{key} must be printable text of at most {limit} characters")
    return value.strip()


def _list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split("|") if v.strip()]
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise InvalidInput(f"{key} must be a list of at most {MAX_LIST} strings (or '|'-separated text)")
    out = tuple(dict.fromkeys(_text(v, key, MAX_TEXT) for v in value))
    return tuple(v for v in out if v)


def parse_fields(doc: Any) -> tuple[str, dict[str, Any]]:
    """``(title_id, fields)`` of one entry document; only the fields present are returned."""
    if not isinstance(doc, dict):
        raise InvalidInput("a catalog entry must be a JSON object")
    unknown = sorted(str(k)[:40] for k in doc if k not in FIELDS)
    if unknown:
        raise InvalidInput(f"unknown catalog field(s): {', '.join(unknown[:5])}")
    title_id = check_id(doc.get("title_id"), "title id")
    out: dict[str, Any] = {}
    if "name" in doc:
        out["name"] = _text(doc["name"], "name", MAX_TEXT)
    for key in LIST_FIELDS:
        if key in doc:
            values = _list(doc[key], key)
            # genres and tags are vocabularies matched across sources ("Drama" from a catalog file,
            # "drama" from an ingest spec): one case; names keep theirs
            out[key] = tuple(dict.fromkeys(v.lower() for v in values)) if key in ("genres", "tags") else values
    if "year" in doc and doc["year"] is not None:
        y = doc["year"]
        if isinstance(y, bool) or not isinstance(y, int | float) or not math.isfinite(y) or not float(y).is_integer() \
                or not 1870 <= y <= 2200:
            raise InvalidInput("year must be an integer in 1870..2200")
        out["year"] = int(y)
    if "description" in doc:
        out["description"] = _text(doc["description"], "description", MAX_DESCRIPTION)
    if "artwork" in doc:
        art = doc["artwork"]
        if not isinstance(art, list) or len(art) > 32 or not all(is_valid_id(a) for a in art):
            raise InvalidInput("artwork must be a list of at most 32 variant ids")
        out["artwork"] = tuple(dict.fromkeys(art))
    return title_id, out


def parse_entries(doc: Any) -> list[tuple[str, dict[str, Any]]]:
    """``{"titles": [entry, ...]}`` as sent to ``PUT /v1/catalog``; errors name the entry."""
    if not isinstance(doc, dict) or set(doc) != {"titles"} or not isinstance(doc["titles"], list):
        raise InvalidInput('expected {"titles": [...]}')
    if len(doc["titles"]) > MAX_ENTRIES:
        raise InvalidInput(f"at most {MAX_ENTRIES} entries per request")
    out = []
    for i, entry in enumerate(doc["titles"]):
        try:
            out.append(parse_fields(entry))
        except InvalidInput as exc:
            raise InvalidInput(f"entry {i}: {exc}") from None
    ids = [t for t, _ in out]
    if len(set(ids)) != len(ids):
        raise InvalidInput("a title appears twice in one request")
    return out


def _csv_doc(row: Mapping[str, str | None]) -> dict[str, Any]:
    doc: dict[str, Any] = {"title_id": (row.get("item") or row.get("title_id") or "").strip()}
    name = row.get("title") if row.get("title") is not None else row.get("name")
    if name:
        doc["name"] = name
    for key in LIST_FIELDS:
        if row.get(key):
            doc[key] = row[key]
    year = (row.get("year") or "").strip()
    if year:
        if not year.isdigit():
            raise InvalidInput("year must be an integer")
        doc["year"] = int(year)
    if row.get("description"):
        doc["description"] = row["description"]
    return doc


def read_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A catalog file: CSV with a header (``item`` or ``title_id`` column) or JSON lines of entries."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        docs: Iterable[tuple[int, Any]] = _json_lines(text, path)
    else:
        docs = _csv_rows(text, path)
    out: list[tuple[str, dict[str, Any]]] = []
    for line, doc in docs:
        if len(out) >= MAX_ENTRIES:
            raise InvalidInput(f"{path}: more than {MAX_ENTRIES} entries")
        try:
            out.append(parse_fields(doc))
        except InvalidInput as exc:
            raise InvalidInput(f"{path}:{line}: {exc}") from None
    if not out:
        raise InvalidInput(f"{path}: no catalog entries")
    return out


def _json_lines(text: str, path: Path) -> Iterable[tuple[int, Any]]:
    for n, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            try:
                yield n, json.loads(raw)
            except (ValueError, RecursionError):
                raise InvalidInput(f"{path}:{n}: not a JSON object") from None


def _csv_rows(text: str, path: Path) -> Iterable[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if not ({"item", "title_id"} & set(header)):
        raise InvalidInput(f"{path}: the CSV header needs an 'item' (or 'title_id') column")
    for row in reader:
        if None in row:
            raise InvalidInput(f"{path}:{reader.line_num}: more fields than the header names")
        try:
            yield reader.line_num, _csv_doc(row)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}:{reader.line_num}: {exc}") from None


def artwork_variants(title_dir: Path) -> tuple[str, ...]:
    """The artwork candidates an ingest job extracted (``artwork/<variant>.jpg``), best first."""
    art = title_dir / "artwork"
    try:
        doc = json.loads((art / "candidates.json").read_text())
        names = [Path(str(c["file"])).stem for c in doc]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(p.stem for p in art.glob("*.jpg")) if art.is_dir() else []
    return tuple(n for n in names if is_valid_id(n) and (art / f"{n}.jpg").is_file())[:32]
