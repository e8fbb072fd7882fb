"""Font pools for rendered text: named entries and folders resolved to font files, each checked to be a font that
has the glyphs it will draw, a content hash for cache keys, and held-out fonts chosen by name.

An entry of a font list is a font file (.ttf, .otf, .ttc, .woff, .woff2: whatever FreeType reads), a folder (its font
files, recursively), or one of these names:
  - `captcha`: the `captcha` package's bundled DroidSansMono (Apache 2.0), what the package draws in by default;
  - `matplotlib`: the text fonts matplotlib ships (a dependency): DejaVu Sans, Sans Mono and Serif in four styles
    each, STIX General in four, Computer Modern roman, bold, italic, sans and typewriter. Its other files are symbol
    fonts that map letters to other shapes (cmsy10, cmex10, STIXSiz*) or have no letters at all (STIXNonUni*,
    *Display, LastResort), so they are listed by name rather than globbed;
  - `roboto`: Roboto (Google, OFL) in 12 weights and italics, from the `font-roboto` package;
  - `source_sans`: Source Sans Pro (Adobe, OFL) in 12 weights and italics, from `font-source-sans-pro` (its .ttf
    files; the .otf beside each is the same face).
The first two install with the project; the last two are an extra (`pip install -e '.[fonts]'`): the proportional
sans faces, light to black and upright to italic, that matplotlib's set lacks.
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from trainer.errors import UserError

FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".woff", ".woff2")
MATPLOTLIB_FONTS = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmb10", "cmti10", "cmss10", "cmtt10",
)
NAMED = ("captcha", "matplotlib", "roboto", "source_sans")
FONT_PACKAGES = {"roboto": ("font_roboto", "font-roboto"), "source_sans": ("font_source_sans_pro", "font-source-sans-pro")}
_ABSENT = "\U0010fffd"  # a private-use code point no text font maps: what a missing glyph renders as


def _missing_package(module: str, entry: str, dist: str) -> str | None:
    """Why a named font set cannot be read (its package is not installed), or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return f"font list entry '{entry}' needs the {dist} package (pip install {dist})"
    return None


def _package_dir(module: str, entry: str | None = None, dist: str | None = None) -> Path:
    """A package's folder without importing it (matplotlib's import costs a second; only its files are wanted)."""
    problem = _missing_package(module, entry or module, dist or module)
    if problem:
        raise UserError(problem)
    return Path(next(iter(importlib.util.find_spec(module).submodule_search_locations)))


def named_fonts(name: str) -> list[Path]:
    if name == "captcha":
        return [_package_dir("captcha") / "data" / "DroidSansMono.ttf"]
    if name in FONT_PACKAGES:
        module, dist = FONT_PACKAGES[name]
        return sorted((_package_dir(module, name, dist) / "files").glob("*.ttf"))
    folder = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    return [folder / f"{stem}.ttf" for stem in MATPLOTLIB_FONTS]


def entry_problem(entry: str) -> str | None:
    """Why one font list entry cannot be used (not there, an empty folder, a file that is not a font), or None.
    Cheap (FreeType reads the header): the config check runs it on every entry before any work."""
    if entry in FONT_PACKAGES:
        return _missing_package(FONT_PACKAGES[entry][0], entry, FONT_PACKAGES[entry][1])
    if entry in NAMED:
        return None
    path = Path(entry).expanduser()
    if path.is_dir():
        if not _fonts_in(path):
            return f"no font files ({' '.join(FONT_SUFFIXES)}) in folder {path}"
        return None
    if not path.is_file():
        return f"font file not found: {path}"
    return _not_a_font(path)


def fonts_problem(entries: Sequence[str] | None) -> str | None:
    """The config check of a font list (`schema.Check`): the first entry's problem, or None. Interpolations are
    checked once resolved, when the dataset is set up."""
    for entry in entries or ():
        if isinstance(entry, str) and "${" not in entry:
            problem = entry_problem(entry)
            if problem:
                return problem
    return None


def _fonts_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FONT_SUFFIXES)


def _not_a_font(path: Path) -> str | None:
    from PIL import ImageFont

    try:
        ImageFont.truetype(str(path), 12)
    except OSError as e:
        return f"{path} is not a font file FreeType can read ({e}); give .ttf, .otf, .ttc, .woff or .woff2 files"
    return None


@lru_cache(maxsize=None)
def missing_glyphs(path: str, chars: str) -> str:
    """The characters of `chars` the font has no glyph for: they render as its .notdef box (or nothing), the shape
    a code point no font maps gets."""
    from PIL import ImageFont

    font = ImageFont.truetype(path, 24)

    def shape(c: str) -> tuple[tuple[int, int], bytes]:
        mask = font.getmask(c)
        return mask.size, bytes(mask)

    absent = shape(_ABSENT)
    return "".join(c for c in chars if shape(c) == absent)


def resolve(entries: Sequence[str], chars: str, where: str) -> list[Path]:
    """The font files of a font list, in order, each font once (by content), each with a glyph for every character of `chars`. A font
    named as a file that lacks some is an error; one found in a folder is skipped with a warning (system folders hold
    symbol fonts)."""
    import logging

    log = logging.getLogger("trainer")
    out: list[Path] = []
    seen: set[str] = set()
    for entry in entries:
        entry = str(entry)
        problem = entry_problem(entry)
        if problem:
            raise UserError(f"{where}: {problem}")
        if entry in NAMED:
            files, named = named_fonts(entry), True
        else:
            path = Path(entry).expanduser()
            files, named = (_fonts_in(path), False) if path.is_dir() else ([path], True)
        for f in files:
            if not named and _not_a_font(f):
                log.warning(f"{where}: skipping {f}: FreeType cannot read it")
                continue
            if not f.is_file():
                raise UserError(f"{where}: font file not found: {f} (from '{entry}')")
            missing = missing_glyphs(str(f), chars)
            if missing:
                if named:
                    raise UserError(f"{where}: {f} has no glyph for '{missing}'; give fonts that draw every "
                                    "character of dataset.alphabet (upper case too)")
                log.warning(f"{where}: skipping {f}: no glyph for '{missing}'")
                continue
            digest = content_sha(f)
            if digest not in seen:  # the same font under two names or in two folders counts once
                seen.add(digest)
                out.append(f)
    if not out:
        raise UserError(f"{where}: no usable font in {list(entries)}")
    return out


def split_held_out(pool: list[Path], names: Sequence[str], where: str) -> tuple[list[Path], list[Path]]:
    """(training fonts, held-out fonts): a font is held out when its file name without suffix matches one of
    `names` (shell wildcards, case-insensitive: `DejaVuSans`, `DejaVuSans-*`). Every name must match a pool font."""
    held = []
    for name in names:
        hits = [f for f in pool if fnmatch.fnmatch(f.stem.lower(), str(name).lower())]
        if not hits:
            raise UserError(f"{where}: '{name}' names no font of dataset.fonts (whose fonts are "
                            f"{', '.join(f.stem for f in pool)})")
        held += [f for f in hits if f not in held]
    train = [f for f in pool if f not in held]
    if not train:
        raise UserError(f"{where} holds out every font of dataset.fonts; leave some to train on")
    return train, [f for f in pool if f in held]


def with_share(train: list[Path], held: list[Path], fonts: list[Path], share: float, where: str) -> list[Path]:
    """`train` with `fonts` listed again, as often as it takes for about `share` of the captchas to be drawn in them
    (each captcha's font is a uniform pick from the list); unchanged when they already have at least that share.
    A font is matched by content, as `resolve` counts it, so the same file reached by another path is the same font."""
    in_train, in_held = {content_sha(f): f for f in train}, {content_sha(f) for f in held}
    shas = [content_sha(f) for f in fonts]
    for f, sha in zip(fonts, shas):
        if sha not in in_train:
            fix = "remove it from dataset.held_out_fonts" if sha in in_held else "add it to dataset.fonts"
            raise UserError(f"{where}: the test font {f.stem} is not a training font; {fix}, or set {where}=0")
    n, k = len(train), len(fonts)
    copies = round((share * n - k) / (k * (1 - share)))  # solves k (1 + c) / (n + k c) = share for c
    return train + [in_train[sha] for sha in shas] * max(copies, 0)


def content_sha(font: str | Path) -> str:
    """The SHA-1 of a font file's bytes: what makes two paths the same font."""
    return hashlib.sha1(Path(font).read_bytes()).hexdigest()


def digest(fonts: Sequence[Path]) -> str:
    """A hash of the fonts' file names and contents, in order (the order decides which font draws which sample)."""
    h = hashlib.sha1()
    for f in fonts:
        h.update(f.name.encode() + b"\0" + bytes.fromhex(content_sha(f)))
    return h.hexdigest()[:10]
