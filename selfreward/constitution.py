"""Constitutions as data: a Markdown file with front matter, numbered principles with ids, and a template.

Contract: `load(path)` returns a validated `Constitution` or raises `ConstitutionError` with one line (the
config check turns it into a recipe error before any model loads). The file looks like:

    ---
    name: helpful-additive
    version: 1
    score_min: 0
    score_max: 5
    scoring: additive          # one score for the whole rubric; `per_principle`: each principle scored alone
    ---
    ## Principles
    1. [relevant] ...one principle per numbered line...
    ## Template
    ...text with {principles}, {instruction} and {response}...

`sha256` is the file's content hash, recorded on every judgment and pair.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from selfreward.digests import sha256_file

_PRINCIPLE = re.compile(r"^\s*\d+\.\s*\[([A-Za-z0-9_-]+)\]\s*(\S.*)$")
_FRONT_KEYS = {"name", "version", "score_min", "score_max", "scoring", "description"}
SCORINGS = ("additive", "per_principle")
SLOTS = {"principles", "instruction", "response"}


class ConstitutionError(ValueError):
    """A constitution file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Principle:
    id: str
    text: str


@dataclass(frozen=True)
class Constitution:
    name: str
    version: str
    score_min: int
    score_max: int
    scoring: str
    principles: tuple[Principle, ...]
    template: str
    sha256: str

    @property
    def scores(self) -> list[int]:
        return list(range(self.score_min, self.score_max + 1))

    def units(self) -> list[tuple[str | None, str]]:
        """(principle id or None, principles text) for each request one response needs: one request for an
        additive rubric, one per principle when principles are scored separately."""
        if self.scoring == "additive":
            return [(None, "\n".join(f"{i}. {p.text}" for i, p in enumerate(self.principles, 1)))]
        return [(p.id, p.text) for p in self.principles]


def _sections(body: str) -> dict[str, str]:
    parts: dict[str, list[str]] = {}
    current = None
    for line in body.splitlines():
        heading = re.match(r"^##\s+(\w+)\s*$", line)
        if heading:
            current = heading.group(1).lower()
            parts[current] = []
        elif current is not None:
            parts[current].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in parts.items()}


def _front_matter(text: str) -> tuple[dict, str]:
    if not text.startswith("---\n"):
        raise ConstitutionError("no front matter (the file must start with a '---' line)")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ConstitutionError("front matter is not closed by a '---' line")
    try:
        meta = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError as e:
        raise ConstitutionError(f"front matter is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(meta, dict):
        raise ConstitutionError("front matter must be a mapping")
    return meta, text[end + 5:]


def _check_meta(meta: dict) -> tuple[int, int, str]:
    unknown = sorted(set(meta) - _FRONT_KEYS)
    if unknown:
        raise ConstitutionError(f"unknown front matter key {unknown[0]!r} (known: {', '.join(sorted(_FRONT_KEYS))})")
    for key in ("name", "version", "score_min", "score_max"):
        if key not in meta:
            raise ConstitutionError(f"front matter has no {key!r}")
    lo, hi = meta["score_min"], meta["score_max"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
        raise ConstitutionError(f"score_min and score_max must be integers (got {lo!r}, {hi!r})")
    if hi <= lo:
        raise ConstitutionError(f"score range must have score_max > score_min (got {lo}..{hi})")
    if lo < 0 or hi > 9:
        raise ConstitutionError(f"scores must be single digits 0..9 (got {lo}..{hi})")
    scoring = meta.get("scoring", "additive")
    if scoring not in SCORINGS:
        raise ConstitutionError(f"scoring must be one of {', '.join(SCORINGS)} (got {scoring!r})")
    return lo, hi, scoring


def _principles(section: str | None) -> tuple[Principle, ...]:
    if section is None:
        raise ConstitutionError("no '## Principles' section")
    found, seen = [], set()
    for line in section.splitlines():
        m = _PRINCIPLE.match(line)
        if m:
            if m.group(1) in seen:
                raise ConstitutionError(f"duplicate principle id {m.group(1)!r}")
            seen.add(m.group(1))
            found.append(Principle(m.group(1), m.group(2).strip()))
        elif line.strip():
            raise ConstitutionError(f"principle line is not '<n>. [id] text': {line.strip()[:60]!r}")
    if not found:
        raise ConstitutionError("no principles (expected numbered lines '1. [id] text' under '## Principles')")
    return tuple(found)


def _check_template(template: str | None) -> str:
    if not template:
        raise ConstitutionError("no '## Template' section")
    try:
        slots = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ConstitutionError(f"bad template ({e}; write literal braces as {{{{ and }}}})") from None
    missing, extra = SLOTS - slots, slots - SLOTS
    if missing:
        raise ConstitutionError(f"template has no {{{sorted(missing)[0]}}} slot")
    if extra:
        raise ConstitutionError(f"template has an unknown slot {{{sorted(extra)[0]}}} "
                                f"(known: {{principles}}, {{instruction}}, {{response}})")
    return template


def load(path: str | Path) -> Constitution:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConstitutionError("not UTF-8 text") from None
    meta, body = _front_matter(text)
    lo, hi, scoring = _check_meta(meta)
    sections = _sections(body)
    principles = _principles(sections.get("principles"))
    template = _check_template(sections.get("template"))
    return Constitution(str(meta["name"]), str(meta["version"]), lo, hi, scoring, principles, template,
                        sha256_file(path))
