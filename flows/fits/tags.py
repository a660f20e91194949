"""FEATURES / EVENTS keywords → tags from a controlled vocabulary.

Observers type these keywords by hand, so matching is case-insensitive and the
tag is stored with the vocabulary's spelling (``polar region`` → "Polar Region").
Terms outside the vocabulary are returned separately for logging, not stored as
tags. ``MISSING`` (what the pipeline writes when nobody filled the keyword in)
and an absent keyword both mean "not ingested", which the archive shows
differently from "no features".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")
MISSING = "MISSING"


@dataclass(frozen=True)
class Vocabulary:
    features: tuple[str, ...]
    events: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)

    def lookup(self, kind: str) -> dict[str, str]:
        """casefolded spelling → canonical term, aliases included, for one kind."""
        terms = self.features if kind == "features" else self.events
        table = {t.casefold(): t for t in terms}
        for alias, target in self.aliases.items():
            if target in terms:
                table.setdefault(alias.casefold(), target)
        return table


@dataclass(frozen=True)
class Tags:
    features: list[str]
    events: list[str]
    features_ingested: bool
    events_ingested: bool
    unmatched: list[str]


@lru_cache(maxsize=4)
def load_vocabulary(path: str | None = None) -> Vocabulary:
    doc = json.loads(Path(path or VOCABULARY_FILE).read_text(encoding="utf-8"))
    return Vocabulary(tuple(doc["features"]), tuple(doc["events"]), dict(doc.get("aliases", {})))


def extract_tags(primary_header, vocabulary: Vocabulary | None = None) -> Tags:
    vocab = vocabulary or load_vocabulary()
    unmatched: list[str] = []
    features, features_ok = _match(primary_header.get("FEATURES"), vocab.lookup("features"), unmatched)
    events, events_ok = _match(primary_header.get("EVENTS"), vocab.lookup("events"), unmatched)
    return Tags(features, events, features_ok, events_ok, unmatched)


def _match(raw, table: dict[str, str], unmatched: list[str]) -> tuple[list[str], bool]:
    if raw is None:
        return [], False
    text = str(raw).strip()
    if text.upper() == MISSING:
        return [], False
    found: list[str] = []
    for item in text.split(","):
        term = " ".join(item.split())
        if not term:
            continue
        canonical = table.get(term.casefold())
        if canonical is None:
            unmatched.append(term)
        elif canonical not in found:
            found.append(canonical)
    return found, True
