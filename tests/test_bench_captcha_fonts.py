"""bench/captcha_fonts.py's scoring: the I=l figures and per-glyph reads in docs/results.md come from these two
functions, so they are checked on hand-counted captchas."""
import numpy as np

from conftest import bench_module
from trainer.datasets.captcha import ALPHABET

captcha_fonts = bench_module("captcha_fonts")


def _ids(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


def test_i_and_l_are_forgiven_only_where_the_captcha_shows_one_of_them():
    shown = np.array([list("Iabc"), list("labc"), list("xabc"), list("iabc")])
    y = np.array([_ids("iabc"), _ids("labc"), _ids("xabc"), _ids("iabc")])
    pred = np.array([_ids("labc"),   # I read as l: wrong, forgiven
                     _ids("labc"),   # right
                     _ids("yabc"),   # x read as y: wrong, not forgiven
                     _ids("labc")])  # a small i read as l: wrong, and not forgiven (its glyph has a dot)
    exact, forgiven = captcha_fonts.accuracy(pred, y, shown, ALPHABET)
    assert (exact, forgiven) == (0.25, 0.5)


def test_bar_reads_counts_each_shown_glyph_right_or_swapped():
    shown = np.array([list("Iabc"), list("Iabc"), list("labc"), list("Labc")])
    pred = np.array([_ids("labc"), _ids("iabc"), _ids("iabc"), _ids("labc")])
    assert captcha_fonts.bar_reads(pred, shown, ALPHABET) == "I (2): 50% right, 50% as l; l (1): 0% right, 100% as i"
