"""Segmentation of text from another year (issue 20): half-width digits and letters read as the full-width ones the
1998 corpus writes, character types, word-list features, the split by issue date, our conventions lines, and
mixed-width input that comes back byte for byte."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import cli, latest_run
from trainer.datasets.cws_dates import issue_starts, line_issues
from trainer.datasets.cws_formats import (DIGIT, HAN, LATIN, NUMERAL, PUNCTUATION, SYMBOL, char_types, fullwidth,
                                          parse_people_daily, parse_segmented, people_daily_dates, read_lines)
from trainer.datasets.cws_lexicon import Lexicon, out_of_fold
from trainer.datasets.segmentation import PeopleDaily, Vocabulary, codepoints, conventions_file
from trainer.errors import UserError
from trainer.models.seg_resfcn import SegResFCN


# ---- character classes -----------------------------------------------------------------------------------------------
def test_half_width_ascii_reads_as_full_width_and_the_text_is_untouched():
    assert fullwidth(codepoints("2001年A%")).tobytes() == codepoints("２００１年Ａ％").tobytes()
    vocab = Vocabulary.build(["１９９８年１２月，ＷＴＯ"] * 2, min_count=2, fold_width=True)
    np.testing.assert_array_equal(vocab.encode("1998年12月,WTO"), vocab.encode("１９９８年１２月，ＷＴＯ"))
    assert (vocab.encode("1998WTO") > 1).all()  # not the unknown id
    plain = Vocabulary.build(["１９９８年"] * 2, min_count=2)
    assert (plain.encode("1998") == 1).all()  # without folding, the half-width digits are unknown


def test_character_types_of_digits_latin_letters_units_and_numerals():
    types = char_types(codepoints("2０一A ｂ℃%，中.·"))
    assert types.tolist() == [DIGIT, DIGIT, NUMERAL, LATIN, char_types(codepoints(" "))[0], LATIN, SYMBOL, SYMBOL,
                              PUNCTUATION, HAN, PUNCTUATION, PUNCTUATION]


# ---- word-list features ------------------------------------------------------------------------------------------------
def test_word_list_features_by_hand_and_matches_stay_inside_clauses():
    lexicon = Lexicon(["中国", "中国人民", "人民", "国", "民银"], max_len=3, fold_width=False)
    features = lexicon.features(["中国人民", "银行"])
    # 中: starts 中国 (2) and 中国人民 (4, capped at 3); 国: ends 中国, inside 中国人民; 人: starts 人民, inside;
    # 民: ends 人民 and 中国人民; 民银 crosses the clause boundary and is not matched
    assert features.tolist() == [[3, 0, 0], [0, 2, 3], [2, 0, 3], [0, 3, 0], [0, 0, 0], [0, 0, 0]]
    assert Lexicon(["２００１年"], 6, fold_width=True).features(["2001年"])[:, 0].tolist() == [5, 0, 0, 0, 0]


def test_training_text_is_matched_against_the_other_folds_only():
    words = [["甲乙", "丙"], ["甲乙"], ["丁戊"], ["丙", "丁戊"]]
    clauses = [["甲乙丙"], ["甲乙"], ["丁戊"], ["丙丁戊"]]
    features = out_of_fold(words, clauses, folds=2, max_len=4, fold_width=False)
    # fold 1 (lines 1-2) knows only 丁戊; fold 2 (lines 3-4) only 甲乙: no line sees its own words
    assert features[:, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    features = out_of_fold(words, [["丁戊甲乙"], ["甲乙"], ["甲乙"], ["丙丁戊"]], folds=2, max_len=4,
                           fold_width=False)
    # fold 1 matches 丁戊 (a word of fold 2), fold 2 matches 甲乙 (of fold 1) but not its own 丁戊
    assert features[:, 0].tolist() == [2, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]


def test_the_model_reads_type_and_word_feature_columns_and_refuses_a_mismatch():
    model = SegResFCN(50, embedding_dim=8, bigram_vocab_size=20, bigram_dim=4, channels=8, dilations=(1,),
                      num_char_types=8, word_feature_size=4)
    x = torch.cat([torch.randint(2, 20, (2, 5, 3)), torch.randint(1, 8, (2, 5, 1)), torch.randint(0, 4, (2, 5, 3))], -1)
    assert model(x)["emissions"].shape == (2, 5, 4)
    with pytest.raises(UserError, match="input columns"):
        model(x[..., :4])


# ---- the split by issue date -------------------------------------------------------------------------------------------
def pd_line(day: int, words: str, dateline: bool = True) -> str:
    """A line whose dateline is `day` of January (0, -1: 31, 30 December)."""
    month, day = ("１月", day) if day > 0 else ("１２月", 31 + day)
    fw = str(day).translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    head = f"本报/r  北京/ns  {month}/t  {fw}日/t  电/n  " if dateline else ""
    return head + "  ".join(f"{w}/n" for w in words.split()) + "  。/w"


def write_issues(path, issues: int = 6, per_issue: int = 5, ids: bool = False):
    lines = []
    for issue in range(1, issues + 1):
        lines.append("新年/n  讲话/n")  # a headline: belongs to the issue whose first dateline follows it
        for k in range(per_issue):
            news_day = issue - 1 if k != 2 else issue - 2  # mostly the day before, some older
            lines.append(pd_line(news_day, "中国 人民 发展 经济", k != 4))
    if ids:
        lines = [f"199801{(i // (per_issue + 1)) + 1:02d}-01-001-{i:03d}/m  {line}" for i, line in enumerate(lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_issue_days_are_found_from_the_datelines(tmp_path):
    lines = write_issues(tmp_path / "pd.txt")
    assert issue_starts(lines) == [0, 6, 12, 18, 24, 30]  # each issue from its headline on
    assert line_issues(lines).tolist() == np.repeat(np.arange(6), 6).tolist()
    with pytest.raises(UserError, match="no datelines"):
        issue_starts(["中国/ns  人民/n"])


def test_the_date_split_is_reproducible_and_holds_out_whole_days(tmp_path):
    write_issues(tmp_path / "pd.txt")
    splits = []
    for _ in range(2):
        data = PeopleDaily(str(tmp_path / "pd.txt"), held_out="days", test_days=2, val_days=1, batch_size=8)
        sentences = data.read()
        splits.append({k: [s.text for s in v] for k, v in sentences.items()})
    assert splits[0] == splits[1]
    assert [len(splits[0][k]) for k in ("train", "val", "test")] == [18, 6, 12]
    with pytest.raises(UserError, match="leave no training days"):
        PeopleDaily(str(tmp_path / "pd.txt"), held_out="days", test_days=5, val_days=1).read()


def test_line_ids_give_the_dates_and_are_not_words(tmp_path):
    lines = write_issues(tmp_path / "pd.txt", ids=True)
    assert people_daily_dates(lines)[:7] == ["19980101"] * 6 + ["19980102"]
    assert parse_people_daily(lines[:1], "pd") == [["新年", "讲话"]]
    data = PeopleDaily(str(tmp_path / "pd.txt"), held_out="days", test_days=1, val_days=1, batch_size=8)
    assert [len(data.read()[k]) for k in ("train", "val", "test")] == [24, 6, 6]


def test_our_conventions_lines_are_segmented_text():
    words = parse_segmented(read_lines(conventions_file()))
    assert len(words) >= 30 and all(words)
    every = {w for line in words for w in line}
    assert {"2001年", "12.5%", "℃", "WTO", "www.people.com.cn", "8时", "30分", "15.8亿"} <= every


# ---- trained: numbers, dates, units and Latin words of another width -------------------------------------------------
WORDS = ["中国", "人民", "发展", "经济", "我们", "今天", "增长", "的", "和", "在", "是", "气温", "下降"]
FW = str.maketrans("0123456789.%", "０１２３４５６７８９．％")


def number_words(rng: random.Random) -> list[str]:
    kind = rng.randrange(6)
    if kind == 0:
        return [f"{rng.randint(1900, 2099)}年".translate(FW), f"{rng.randint(1, 12)}月".translate(FW),
                f"{rng.randint(1, 31)}日".translate(FW)]
    if kind == 1:
        return [f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%".translate(FW)]
    if kind == 2:
        return [str(rng.randint(-20, 40)).replace("-", "零下").translate(FW), "℃"]
    if kind == 3:
        return [rng.choice(["ＷＴＯ", "ＡＰＥＣ", "ＶＣＤ", "ＣＰＵ"])]
    if kind == 4:
        return [f"{rng.randint(1, 23)}时".translate(FW), f"{rng.randint(1, 59)}分".translate(FW)]
    return [rng.choice(WORDS)]


def write_corpus(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(2, 6)):
            words += [rng.choice(WORDS)] + number_words(rng)
        words.append(rng.choice(["，", "。"]))
        lines.append("  ".join(f"{w}/{'w' if w in '，。' else 'n'}" for w in words))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def trained(workdir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("numbers") / "pd.txt"
    write_corpus(corpus, 600, seed=1)
    cli(workdir, "task=segmentation", f"dataset.path={corpus}", "model.embedding_dim=32", "model.channels=32",
        "model.bigram_dim=8", "model.dilations=[1,2]", "model.dropout=0.1", "dataset.batch_size=32",
        "optim.lr=1e-2", "dataset.word_features=4", "trainer.max_epochs=6", "trainer.max_time=null",
        "trainer.progress=false")
    return latest_run(workdir, "segmentation")


def test_half_width_numbers_units_and_latin_words_are_segmented_as_their_full_width_forms(workdir, trained):
    text = "今天2037年11月29日，增长35.7%和WTO，气温下降17℃，13时48分。\n"
    proc = cli(workdir, "task=segmentation", "mode=predict", f"ckpt={trained}", "input=-", "output=-",
               input_text=text)
    assert proc.stdout == ("今天  2037年  11月  29日  ，  增长  35.7%  和  WTO  ，  气温  下降  17  ℃  ，  13时  48分"
                           "  。\n")


def test_mixed_width_input_comes_back_byte_for_byte(workdir, trained, tmp_path):
    lines = ["经济增长１２．５％和12.5%，ＷＴＯ和WTO。", "", "2001年１月，零下5℃", "Ｗ T\u3000O"]
    source = tmp_path / "mixed.txt"
    source.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    out = tmp_path / "out.utf8"
    cli(workdir, "task=segmentation", "mode=predict", f"ckpt={trained}", f"input={source}", f"output={out}")
    predicted = out.read_bytes().decode("utf-8").split("\n")[:-1]
    assert len(predicted) == len(lines)
    for line, words in zip(lines, predicted):
        # every character comes back as it was, in order; only the word separators are added (and the input's own
        # spaces, which are word boundaries, become separators)
        assert words.replace("  ", "").encode("utf-8") == "".join(line.split()).encode("utf-8")
    assert predicted[3].split("  ") == ["Ｗ", "T", "O"]


def test_icwb2_files_train_on_the_whole_file_and_score_in_one_command(workdir, tmp_path):
    rng = random.Random(3)
    lines = [[rng.choice(WORDS) for _ in range(rng.randint(2, 6))] + number_words(rng) + ["。"] for _ in range(200)]
    (tmp_path / "train.utf8").write_text("".join(" ".join(w) + "\n" for w in lines[:180]), encoding="utf-8")
    # the test file as later text writes it: half-width digits, letters and percent signs
    gold = ["  ".join(w).translate(str.maketrans("０１２３４５６７８９．％ＡＣＤＥＩＯＰＴＶＷ", "0123456789.%ACDEIOPTVW"))
            for w in lines[180:]]
    (tmp_path / "gold.utf8").write_text("".join(g + "\n" for g in gold), encoding="utf-8")
    (tmp_path / "test.utf8").write_text("".join(g.replace("  ", "") + "\n" for g in gold), encoding="utf-8")
    cli(workdir, "task=segmentation", "dataset=icwb2", f"dataset.train={tmp_path / 'train.utf8'}",
        f"dataset.test={tmp_path / 'test.utf8'}", f"dataset.gold={tmp_path / 'gold.utf8'}", "dataset.val_fraction=0",
        "dataset.word_features=4", "model.embedding_dim=16", "model.channels=16", "model.bigram_dim=4",
        "model.dilations=[1]", "dataset.batch_size=32", "trainer.max_epochs=1", "trainer.max_time=null",
        "trainer.progress=false")
    run = latest_run(workdir, "segmentation")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and 0 <= results["test"]["test/f1"] <= 1
    assert "no validation split" in (run / "run.log").read_text()  # the whole file trained; best.pt = the final weights
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["data"]
    assert state["normalize_width"] and state["char_types"] and state["word_features"] == 4
