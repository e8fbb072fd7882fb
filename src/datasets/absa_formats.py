"""File formats of aspect (entity) level sentiment data (problem 1 of docs/problems.md), read strictly, written as the
contest wrote them.

- The CCF BDCI 2016 contest ("view-based sentiment analysis", car domain): `Train.csv` holds `SentenceId<TAB>Content`
  and `Label.csv` holds `SentenceId<TAB>View<TAB>Opinion`, Opinion one of pos, neu, neg; UTF-8, a header line, CRLF
  line ends. The fields are not quoted (a `"` is text), so the files are split on TAB, not read with a CSV dialect.
  A View is an entity name that occurs verbatim in its sentence; its character span is not given. A sentence with no
  Label row has no View.
- JSON lines, one sentence a line: `{"text": ..., "aspects": [{"term", "start", "end", "polarity"}], "id": ...}`.
  `start`/`end` (character offsets, end exclusive) may be left out: every occurrence of the term is then meant, as
  in the contest's files. `aspects` left out: an unlabelled sentence. Another corpus needs only a conversion to this
  format (docs/absa_semeval2014_to_jsonl.py converts SemEval-2014 Task 4's XML).
- New sentences for prediction: one a line, or the contest's `Train.csv` format (recognised by its header line).
- Predictions are written in the `Label.csv` format.

Every reading error is one line that names the file and the line to fix.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

from trainer.errors import UserError

#: Polarities in tag order: tag 1 = pos, 2 = neu, 3 = neg (0 = not an entity).
POLARITIES = ("pos", "neu", "neg")
_SPELLINGS = {"pos": "pos", "positive": "pos", "neu": "neu", "neutral": "neu", "neg": "neg", "negative": "neg"}
TEXT_HEADER = ("SentenceId", "Content")
LABEL_HEADER = ("SentenceId", "View", "Opinion")


@dataclass
class Aspect:
    term: str
    polarity: str  # one of POLARITIES
    start: int | None = None  # None: every occurrence of `term` in the text
    end: int | None = None


@dataclass
class Sentence:
    id: str
    text: str
    aspects: list[Aspect] | None = field(default=None)  # None: unlabelled


def polarity_of(value: str, where: str) -> str:
    """pos/neu/neg (also positive/neutral/negative, any case); one-line error naming `where` otherwise."""
    p = _SPELLINGS.get(str(value).strip().lower())
    if p is None:
        raise UserError(f"{where}: polarity '{value}' is not one of pos, neu, neg (or positive, neutral, negative)")
    return p


# ---- reading -----------------------------------------------------------------------------------------------------
def read_text(path: str | Path) -> list[str]:
    """The lines of a UTF-8 file (BOM dropped, LF or CRLF), or of standard input for '-'."""
    if str(path) == "-":
        data, source = sys.stdin.buffer.read(), "standard input"
    else:
        p = Path(path)
        if p.is_dir():
            raise UserError(f"{p} is a folder; give a UTF-8 text file")
        if not p.is_file():
            raise UserError(f"file not found: {p}")
        data, source = p.read_bytes(), str(p)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        how = "iconv -f GBK -t UTF-8" if source == "standard input" else f"iconv -f GBK -t UTF-8 {source} > new.csv"
        raise UserError(f"{source} line {line}: not UTF-8 (byte 0x{data[e.start]:02x}; a GBK file?); convert it "
                        f"to UTF-8, e.g. {how}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_table(path: str | Path, header: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a TAB-separated file with `header` as its first line; empty lines skipped."""
    lines = read_text(path)
    if not lines or tuple(f.strip() for f in lines[0].split("\t")) != header:
        found = lines[0][:60] if lines else "an empty file"
        raise UserError(f"{path} line 1: expected the header '{chr(9).join(header)}' (TAB-separated), found "
                        f"'{found}'")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t", len(header) - 1)
        if len(fields) != len(header):
            raise UserError(f"{path} line {number}: {len(fields)} TAB-separated field(s), expected "
                            f"{len(header)} ({', '.join(header)})")
        rows.append((number, fields))
    return rows


def read_contest(texts_path: str | Path, labels_path: str | Path,
                 unknown_ids: str = "error") -> tuple[list[Sentence], list[str]]:
    """The sentences of a Train.csv / Label.csv pair, in Train.csv order, each with its Views (every occurrence).

    A Label row whose SentenceId is not in Train.csv is an error, or with `unknown_ids="skip"` left out and listed in
    the notes returned beside the sentences (the first round's files have three such rows).
    """
    if unknown_ids not in ("error", "skip"):
        raise UserError(f"dataset.unknown_ids={unknown_ids}: must be error or skip")
    sentences: dict[str, Sentence] = {}
    first_line: dict[str, int] = {}
    for number, (sid, content) in read_table(texts_path, TEXT_HEADER):
        sid = sid.strip()
        if sid in sentences:
            raise UserError(f"{texts_path} line {number}: SentenceId {sid} already on line {first_line[sid]}")
        sentences[sid], first_line[sid] = Sentence(sid, content, []), number
    skipped = []
    for number, (sid, view, opinion) in read_table(labels_path, LABEL_HEADER):
        sid, where = sid.strip(), f"{labels_path} line {number}"
        polarity = polarity_of(opinion, where)
        if sid not in sentences:
            if unknown_ids == "skip":
                skipped.append(f"{where} ({sid})")
                continue
            raise UserError(f"{where}: SentenceId {sid} is not in {texts_path} (dataset.unknown_ids=skip leaves "
                            "such rows out)")
        if not view.strip():
            raise UserError(f"{where}: empty View")
        sentences[sid].aspects.append(Aspect(view, polarity))
    notes = [f"{len(skipped)} label row(s) name a SentenceId missing from {texts_path}, left out: "
             + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")] if skipped else []
    return list(sentences.values()), notes


def read_jsonl(path: str | Path) -> list[Sentence]:
    """Sentences of a JSON-lines file (see the module docstring); ids default to the line number."""
    out = []
    for number, line in enumerate(read_text(path), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise UserError(f"{where}: expected an object with a \"text\" string")
        text, aspects = item["text"], item.get("aspects")
        if aspects is not None and not isinstance(aspects, list):
            raise UserError(f"{where}: \"aspects\" must be a list of {{term, start, end, polarity}} objects")
        parsed = None if aspects is None else [_aspect(a, text, where) for a in aspects]
        out.append(Sentence(str(item.get("id", number)), text, parsed))
    return out


def _aspect(a: object, text: str, where: str) -> Aspect:
    if not isinstance(a, dict) or not isinstance(a.get("term"), str) or not a["term"] or "polarity" not in a:
        raise UserError(f"{where}: each aspect needs a non-empty \"term\" and a \"polarity\"; found {str(a)[:60]}")
    polarity = polarity_of(a["polarity"], where)
    start, end = a.get("start"), a.get("end")
    if start is None and end is None:
        return Aspect(a["term"], polarity)
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        raise UserError(f"{where}: aspect '{a['term']}' has start={start}, end={end}; give both, "
                        f"0 <= start < end <= {len(text)}, or neither")
    if text[start:end] != a["term"]:
        raise UserError(f"{where}: text[{start}:{end}] is '{text[start:end]}', not the term '{a['term']}'")
    return Aspect(a["term"], polarity, start, end)


def read_entity_list(path: str | Path) -> list[str]:
    """One entity a line (surrounding spaces dropped, empty lines skipped)."""
    return [line.strip() for line in read_text(path) if line.strip()]


def read_new_sentences(source: str | Path) -> list[Sentence]:
    """Sentences to tag: the contest's Train.csv format (by its header) or one sentence a line (id = line number;
    empty lines skipped, their numbers kept)."""
    lines = read_text(source)
    if lines and tuple(f.strip() for f in lines[0].split("\t")) == TEXT_HEADER:
        return [Sentence(sid.strip(), content) for _, (sid, content) in read_table(source, TEXT_HEADER)]
    return [Sentence(str(number), line) for number, line in enumerate(lines, 1) if line.strip()]


# ---- writing -----------------------------------------------------------------------------------------------------
def write_labels(rows: Iterable[tuple[str, str, str]], out: TextIO) -> None:
    """(SentenceId, View, Opinion) rows in the Label.csv format: header, TAB-separated, CRLF."""
    out.write("\t".join(LABEL_HEADER) + "\r\n")
    for sid, view, opinion in rows:
        out.write(f"{sid}\t{view}\t{opinion}\r\n")
