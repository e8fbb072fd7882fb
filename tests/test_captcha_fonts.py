"""Captchas from a pool of fonts: seeded and reproducible renders, held-out fonts that training never draws in, a cache
keyed by the fonts' contents, and a bad font list as one line (at composition where it can be, else at set-up)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from trainer.datasets import fonts as fontpool
from trainer.datasets.base import per_sample_uniform
from trainer.datasets.captcha import SPLIT_SEEDS, CaptchaData, _seed, cached_split, font_of, render
from trainer.errors import UserError
from trainer.schema import check_section

SMALL = dict(width=32, height=12, render_workers=1, batch_size=8)
HELD = ["DejaVuSans", "DejaVuSans-*", "cmr10"]


def _pool() -> tuple[str, ...]:
    return tuple(str(f) for f in fontpool.named_fonts("captcha") + fontpool.named_fonts("matplotlib"))


def test_rendering_with_a_font_list_is_seeded_and_reproducible(tmp_path):
    pool = _pool()
    a, text_a = render(11, fonts=pool)
    b, text_b = render(11, fonts=pool)
    assert np.array_equal(a, b) and text_a == text_b
    # the text does not depend on the fonts; the drawing does
    other, text_other = render(11, fonts=pool[1:2])
    assert text_other == text_a and not np.array_equal(a, other)
    # the package's own font as a one-font list draws what the package draws by default
    assert np.array_equal(render(11, fonts=(pool[0],))[0], render(11)[0])
    # a whole cache: the same with 1 or 2 render processes, in another folder
    first = cached_split(tmp_path / "a", 7, 24, 4, 32, 12, (160, 60), workers=2, fonts=pool)
    again = cached_split(tmp_path / "b", 7, 24, 4, 32, 12, (160, 60), workers=1, fonts=pool)
    assert np.array_equal(first["x"], again["x"]) and np.array_equal(first["y"], again["y"])
    # stroke width: seeded too, the same text, other pixels; the training split's cache is keyed by it
    thick = [render(11, fonts=pool, stroke=1.0) for _ in range(2)]
    assert np.array_equal(thick[0][0], thick[1][0]) and thick[0][1] == text_a and not np.array_equal(thick[0][0], a)
    stroked = cached_split(tmp_path / "a", 7, 24, 4, 32, 12, (160, 60), workers=1, fonts=pool, stroke=0.5)
    assert not np.array_equal(stroked["x"], first["x"]) and np.array_equal(stroked["y"], first["y"])
    # several fonts are used, one per captcha
    assert len({font_of(_seed(7, i), pool) for i in range(24)}) > 5


def test_held_out_fonts_never_draw_a_training_captcha(tmp_path):
    dm = CaptchaData(fonts=["captcha", "matplotlib"], held_out_fonts=HELD, train_size=40, val_size=8, test_size=8,
                     val_unseen_size=16, test_unseen_size=8, cache_dir=str(tmp_path), **SMALL)
    dm.setup()
    held = {f for f in _pool() if f.rsplit("/", 1)[-1] in ("DejaVuSans.ttf", "cmr10.ttf")
            or "/DejaVuSans-" in f}
    assert len(held) == 5  # DejaVu Sans in four styles, cmr10
    train, unseen = set(dm.split_fonts["train"]), set(dm.split_fonts["val_unseen"])
    assert unseen == held and not train & held and train | held == set(_pool())
    x = dm.splits["train"].arrays["x"]
    for i in range(40):  # each training captcha is the render of its one font, which is never held out
        font = font_of(_seed(SPLIT_SEEDS["train"], i), dm.split_fonts["train"])
        assert font not in held
        alone = render(_seed(SPLIT_SEEDS["train"], i), size=(32, 12), fonts=(font,))[0]
        assert np.array_equal(x[i, 0], alone)
    # val/test stay in the package's font: the captchas of before
    assert dm.split_fonts["test"] == tuple(str(f) for f in fontpool.named_fonts("captcha"))
    # the unseen splits are rendered only when read, in held-out fonts only
    assert not list((tmp_path / "captcha").glob("v1-seed4000-*")) and "val_unseen" not in dm.splits
    assert dm.has_split("val_unseen") and dm.has_split("test_unseen")
    batch = next(iter(dm.loader("val_unseen")))
    assert batch["x"].shape == (8, 1, 12, 32) and list((tmp_path / "captcha").glob("v1-seed4000-*.x.npy"))
    for i in range(16):
        assert font_of(_seed(SPLIT_SEEDS["val_unseen"], i), dm.split_fonts["val_unseen"]) in held


def test_the_cache_is_keyed_by_font_contents(tmp_path):
    mine, other = tmp_path / "a" / "mine.ttf", tmp_path / "b" / "mine.ttf"  # same name, another font
    for path, font in ((mine, 0), (other, 8)):
        path.parent.mkdir()
        shutil.copy(fontpool.named_fonts("matplotlib")[font], path)
    first = cached_split(tmp_path, 9, 8, 4, 32, 12, (160, 60), workers=1, fonts=(str(mine),))
    second = cached_split(tmp_path, 9, 8, 4, 32, 12, (160, 60), workers=1, fonts=(str(other),))
    assert not np.array_equal(first["x"], second["x"])
    assert len(list((tmp_path / "captcha").glob("*.x.npy"))) == 2
    # the package's font keeps the cache name it had before font pools
    cached_split(tmp_path, 9, 8, 4, 32, 12, (160, 60), workers=1, fonts=tuple(map(str, fontpool.named_fonts("captcha"))))
    assert len(list((tmp_path / "captcha").glob("v1-seed9-n8-len4-32x12-from160x60-????????.x.npy"))) == 1


def _node(**dataset):
    return OmegaConf.create({"_target_": "trainer.datasets.captcha.CaptchaData", **dataset})


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing.ttf"), "font file not found: .*missing.ttf"),
    (lambda d: (d / "notes.ttf").write_text("not a font") and str(d / "notes.ttf"), ".*notes.ttf is not a font file"),
    (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no font files .* in folder .*empty"),
])
def test_a_bad_font_is_one_line_at_composition_and_at_set_up(tmp_path, make, message):
    entry = make(tmp_path)
    with pytest.raises(UserError, match=f"bad value for 'dataset.fonts': {message}"):
        check_section(_node(fonts=["captcha", entry]), "dataset")
    with pytest.raises(UserError, match=f"bad value for 'dataset.test_fonts': {message}"):
        check_section(_node(test_fonts=[entry]), "dataset")
    dm = CaptchaData(fonts=["matplotlib", entry], cache_dir=str(tmp_path), **SMALL)
    with pytest.raises(UserError, match=f"^dataset.fonts: {message}"):
        dm.setup()
    assert not (tmp_path / "captcha").exists()  # before anything is rendered


def test_fonts_without_the_letters_and_unknown_held_out_names(tmp_path):
    symbols = str(fontpool.named_fonts("matplotlib")[0].parent / "STIXSizOneSymReg.ttf")
    with pytest.raises(UserError, match="STIXSizOneSymReg.ttf has no glyph for 'abc"):
        CaptchaData(fonts=[symbols], cache_dir=str(tmp_path), **SMALL).setup()
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(symbols, folder)
    shutil.copy(fontpool.named_fonts("captcha")[0], folder)
    assert [f.name for f in fontpool.resolve([str(folder)], "abcABC", "dataset.fonts")] == ["DroidSansMono.ttf"]
    with pytest.raises(UserError, match="'Helvetica' names no font of dataset.fonts"):
        CaptchaData(fonts=["matplotlib"], held_out_fonts=["Helvetica"], cache_dir=str(tmp_path), **SMALL).setup()
    with pytest.raises(UserError, match="holds out every font"):
        CaptchaData(fonts=["captcha"], held_out_fonts=["*"], cache_dir=str(tmp_path), **SMALL).setup()


def test_predict_needs_no_font(tmp_path):
    dm = CaptchaData(fonts=[str(tmp_path / "gone.ttf")], held_out_fonts=["x"], **SMALL)
    dm.setup("predict")
    assert dm.splits == {}


def test_mode_eval_renders_only_the_split_it_scores(tmp_path):
    dm = CaptchaData(fonts=["captcha", "matplotlib"], held_out_fonts=HELD, train_size=16, val_size=8, test_size=8,
                     test_unseen_size=8, cache_dir=str(tmp_path), **SMALL)
    dm.setup("eval")
    assert not (tmp_path / "captcha").exists() and all(dm.has_split(s) for s in ("val", "test", "test_unseen"))
    next(iter(dm.loader("test_unseen")))
    assert [p.name.split("-")[1] for p in (tmp_path / "captcha").glob("*.x.npy")] == ["seed5000"]


def test_the_same_font_in_two_folders_or_under_two_names_counts_once(tmp_path):
    """A folder tree often holds copies of one font (documentation sites do, per page); each would otherwise be
    drawn as often as a whole other font, and weigh as much in a per-font mean."""
    droid = fontpool.named_fonts("captcha")[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(droid, tmp_path / folder / "DroidSansMono.ttf")
    shutil.copy(droid, tmp_path / "b" / "renamed.ttf")
    fonts = fontpool.resolve([str(tmp_path / "a"), str(tmp_path / "b"), "captcha"], "abcABC", "dataset.fonts")
    assert fonts == [tmp_path / "a" / "DroidSansMono.ttf"]


def test_training_shear_slants_only_the_training_split_seeded_by_sample_and_epoch(tmp_path):
    def data(**kw):
        d = CaptchaData(fonts=["captcha"], train_size=8, val_size=8, test_size=0, cache_dir=str(tmp_path), **SMALL,
                        **kw)
        d.setup("fit")
        return d

    plain, slanted = data(), data(train_shear=0.4)
    rows = list(range(8))
    a, b = (d.splits["train"].__getitems__(rows)["x"] for d in (plain, slanted))
    assert a.shape == b.shape and not torch.equal(a, b)
    assert torch.equal(b, data(train_shear=0.4).splits["train"].__getitems__(rows)["x"])  # seeded
    # a sample leans the same way in any batch; another epoch draws another lean
    assert torch.equal(slanted.splits["train"].__getitems__([3])["x"][0], b[3])
    slanted.splits["train"].set_epoch(1)
    assert not torch.equal(slanted.splits["train"].__getitems__(rows)["x"], b)
    # validation is never slanted
    assert torch.equal(plain.splits["val"].__getitems__(rows)["x"], slanted.splits["val"].__getitems__(rows)["x"])
    # the same augmentation renders on the fly, epoch by epoch
    fly = CaptchaData(fonts=["captcha"], train_size=8, val_size=0, test_size=0, cache=False, train_shear=0.4, **SMALL)
    fly.setup("fit")
    fly.splits["train"].set_epoch(1)
    assert torch.allclose(fly.splits["train"][3]["x"], slanted.splits["train"].__getitems__([3])["x"][0], atol=1e-6)
    fly.splits["train"].set_epoch(0)
    assert torch.allclose(fly.splits["train"][3]["x"], b[3], atol=1e-6)


def test_affine_with_no_shear_is_unchanged_and_a_shear_moves_columns_by_rows():
    from trainer.datasets import image_augment as aug
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, :, 4] = 1.0  # a vertical bar
    u = np.full((1, aug.DRAWS["affine"]), 0.5)  # no rotation, zoom or shift
    assert torch.allclose(aug.affine(x, u), x, atol=1e-6)
    u[0, 5] = 1.0  # the largest lean: x moves by `shear` pixels per row
    bent = aug.affine(x, u, shear=1.0)
    top, bottom = bent[0, 0, 0].argmax().item(), bent[0, 0, -1].argmax().item()
    assert abs(top - bottom) == 8
    wide = torch.zeros(1, 1, 9, 41)  # in pixels on a wide image too (affine_grid scales x and y apart)
    wide[0, 0, :, 20] = 1.0
    bent = aug.affine(wide, u, shear=0.5)
    assert abs(bent[0, 0, 0].argmax().item() - bent[0, 0, -1].argmax().item()) == 4


def test_rotation_turns_a_wide_image_by_the_angle_in_pixels():
    from trainer.datasets import image_augment as aug
    u = np.full((1, aug.DRAWS["affine"]), 0.5)
    u[0, 0] = 1.0  # the largest turn: +degrees
    cross = torch.zeros(1, 1, 41, 121)  # wide, as captchas are: affine_grid scales x and y apart
    cross[0, 0, :, 60] = 1.0
    turned = aug.affine(cross, u, degrees=10.0)
    rows = torch.arange(5, 36)
    cols = turned[0, 0, rows].argmax(-1).float()
    lean = np.polyfit(rows.numpy(), cols.numpy(), 1)[0]  # columns per row of the turned vertical bar
    flat = torch.zeros(1, 1, 41, 121)
    flat[0, 0, 20, :] = 1.0
    turned = aug.affine(flat, u, degrees=10.0)
    xs = torch.arange(30, 91)
    tilt = np.polyfit(xs.numpy(), turned[0, 0, :, xs].argmax(0).float().numpy(), 1)[0]  # rows per column
    assert abs(abs(lean) - np.tan(np.radians(10))) < 0.02 and abs(abs(tilt) - np.tan(np.radians(10))) < 0.02


def test_warp_moves_pixels_by_a_smooth_field_of_about_the_given_pixels():
    from trainer.datasets import image_augment as aug
    x = torch.zeros(2, 1, 24, 48)
    x[:, 0, :, 24] = 1.0  # a vertical bar
    still = np.full((2, aug.DRAWS["warp"]), 0.5)  # every control point at rest
    assert torch.allclose(aug.warp(x, still, pixels=3.0), x, atol=1e-6)
    u = per_sample_uniform(0, 0, np.arange(2), aug.DRAWS["warp"])
    bent = aug.warp(x, u, pixels=3.0)
    assert not torch.equal(bent[0], bent[1])  # each sample its own field
    cols = bent[:, 0].argmax(-1)  # where the bar is on each row
    assert 1 <= cols.sub(24).abs().max() <= 3 * 1.45  # the control points move up to 3, bicubic overshoots by < 45%
    assert cols.diff(dim=1).abs().max() <= 1  # smooth: neighbouring rows move alike, the bar stays one stroke
    u[:, :] = 1.0  # the whole field at its largest: every pixel moves by `pixels` (bicubic overshoots nowhere)
    assert torch.equal(aug.warp(x, u, pixels=3.0)[:, 0].argmax(-1)[:, 4:-4], torch.full((2, 16), 21))


def test_rotation_zoom_and_warp_distort_only_training_captchas_seeded(tmp_path):
    def train_x(split="train", **kw):
        d = CaptchaData(fonts=["captcha"], train_size=8, val_size=4, test_size=0, cache_dir=str(tmp_path), **SMALL,
                        **kw)
        d.setup("fit")
        return d.splits[split].__getitems__(list(range(4 if split == "val" else 8)))["x"]

    plain = train_x()
    for kw in ({"train_rotation": 8}, {"train_zoom": 0.2}, {"train_warp": 1.0}):
        x = train_x(**kw)
        assert not torch.equal(x, plain) and torch.equal(x, train_x(**kw)), kw
        assert torch.equal(train_x("val", **kw), train_x("val")), kw  # validation captchas are drawn as rendered
    # a shear alone draws what it drew before warps existed: the affine reads the first six uniforms of each sample
    # either way, and the warp's come after them
    from trainer.datasets import image_augment as aug
    idx = np.arange(8)
    both = per_sample_uniform(0, 0, idx, aug.DRAWS["affine"] + aug.DRAWS["warp"])
    assert np.array_equal(both[:, :aug.DRAWS["affine"]], per_sample_uniform(0, 0, idx, aug.DRAWS["affine"]))
    sheared = aug.affine(plain, per_sample_uniform(0, 0, idx, aug.DRAWS["affine"]), shear=0.3, fill=1.0)
    assert torch.equal(train_x(train_shear=0.3, seed=0), sheared)
    with pytest.raises(UserError, match="dataset.train_warp"):
        check_section(_node(train_warp=-1), "dataset")
    # a warp that would fold captchas of this size over themselves: one line with the largest that does not
    with pytest.raises(UserError, match=r"^dataset.train_warp=3.0 can fold 32x12 captchas over themselves: set it "
                                        r"to at most 1.1 pixels at this size$"):
        train_x(train_warp=3.0)


def test_test_font_share_draws_that_share_of_training_captchas_in_the_test_fonts(tmp_path):
    def train_fonts(fonts=("captcha", "matplotlib"), held_out_fonts=tuple(HELD), **kw):
        return CaptchaData(fonts=fonts, held_out_fonts=held_out_fonts, cache_dir=str(tmp_path), **SMALL,
                           **kw).resolve_fonts()["train"]

    plain, shared = train_fonts(), train_fonts(test_font_share=0.25)
    droid = str(fontpool.named_fonts("captcha")[0])
    assert set(shared) == set(plain) and plain.count(droid) == 1
    drawn = [font_of(seed, shared) for seed in range(4000)]
    assert 0.22 < drawn.count(droid) / len(drawn) < 0.30
    assert train_fonts(test_font_share=0.01) == plain  # already drawn that often
    # two test fonts share it: each drawn about half as often
    mono = next(str(f) for f in fontpool.named_fonts("matplotlib") if f.stem == "DejaVuSansMono")
    two = train_fonts(test_font_share=0.4, test_fonts=["captcha", mono])
    drawn = [font_of(seed, two) for seed in range(4000)]
    assert 0.36 < (drawn.count(droid) + drawn.count(mono)) / len(drawn) < 0.44
    assert 0.15 < drawn.count(mono) / len(drawn) < 0.25
    # the same file under another path is the same font (as dataset.fonts counts fonts), listed by its pool path
    copy = shutil.copy(droid, tmp_path / "MyDroid.ttf")
    assert set(train_fonts(test_font_share=0.25, test_fonts=[str(copy)])) == set(plain)
    cmr10 = next(str(f) for f in fontpool.named_fonts("matplotlib") if f.stem == "cmr10")
    with pytest.raises(UserError, match="^dataset.test_font_share: the test font cmr10 is not a training font; "
                                        "remove it from dataset.held_out_fonts, or set dataset.test_font_share=0$"):
        train_fonts(test_font_share=0.25, test_fonts=[cmr10])
    with pytest.raises(UserError, match="^dataset.test_font_share: the test font DejaVuSansMono is not a training "
                                        "font; add it to dataset.fonts, or set dataset.test_font_share=0$"):
        train_fonts(fonts=["captcha"], held_out_fonts=[], test_font_share=0.25, test_fonts=[mono])


def test_a_named_font_set_whose_package_is_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(fontpool.FONT_PACKAGES, "roboto", ("no_such_font_package", "font-nothing"))
    assert fontpool.fonts_problem(["captcha", "roboto"]) == (
        "font list entry 'roboto' needs the font-nothing package (pip install font-nothing)")
    with pytest.raises(UserError, match="needs the font-nothing package"):
        fontpool.resolve(["roboto"], "ab", "dataset.fonts")
