"""Chinese word segmentation, in process: formats, clauses and tags, bucketing, Viterbi/CRF, the SIGHAN scorer,
the user dictionary, the models' padding invariance."""
from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from trainer.datasets.base import BucketBatches
from trainer.datasets.cws_formats import (B, E, M, S, decode_utf8, parse_people_daily, parse_segmented, read_lines,
                                  read_user_dictionary, split_clauses, tags_to_words, word_tags, write_segmented)
from trainer.datasets.segmentation import (IGNORE, PAD, UNK, BigramVocabulary, ClauseTable, PeopleDaily, Sentence,
                                   SentenceDataset, Vocabulary)
from trainer.models.heads.cws_dictionary import UserDictionary
from trainer.models.heads.sbme_tagger import ALLOWED, TAGS, SbmeTagger
from trainer.models.heads.sighan_score import COUNTS, lcs_alignment, line_counts, score_lines, scores
from trainer.models.heads.viterbi import FORBIDDEN, crf_nll, tag_mask, transition_mask, viterbi
from trainer.models.seg_fcn import SegFCN
from trainer.models.seg_resfcn import SegResFCN
from trainer.errors import UserError


# ---- formats -------------------------------------------------------------------------------------------------------
def test_gbk_bytes_are_a_one_line_error_naming_the_line():
    data = "第一行\n".encode("utf-8") + "第二行".encode("gbk")
    with pytest.raises(UserError) as e:
        decode_utf8(data, "x.txt")
    message = str(e.value)
    assert "\n" not in message and "x.txt is not UTF-8" in message and "line 2" in message
    assert "iconv -f GBK -t UTF-8 x.txt > x.txt.utf8" in message
    with pytest.raises(UserError, match="pipe it through iconv -f GBK -t UTF-8$"):  # no file to name
        decode_utf8(data, "standard input")


def test_a_folder_given_as_a_text_or_dictionary_file_says_so(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path} is a folder; give a UTF-8 text file"):
        read_lines(tmp_path)
    with pytest.raises(UserError, match=f"dict={tmp_path} is a folder; give a dictionary file"):
        read_user_dictionary(tmp_path)


def test_utf8_lines_keep_empty_lines_and_drop_bom_and_cr():
    assert decode_utf8("\ufeff一\r\n\n二\n".encode("utf-8"), "f") == ["一", "", "二"]


def test_people_daily_drops_pos_tags_and_rejects_untagged_tokens():
    lines = ["迈向/v  充满/v  希望/n  的/u  新/a  世纪/n", "叹/Vg 曰/Vg", "", "１/２/m  张/q"]
    assert parse_people_daily(lines, "pd") == [["迈向", "充满", "希望", "的", "新", "世纪"], ["叹", "曰"], [],
                                               ["１/２", "张"]]
    with pytest.raises(UserError, match=r"pd line 1: token '世纪' is not word/POS"):
        parse_people_daily(["迈向/v  世纪"], "pd")


def test_icwb2_words_split_at_any_space_and_output_keeps_empty_lines():
    assert parse_segmented(["共同  创造\u3000美好 的", "", "  新世纪 "]) == [["共同", "创造", "美好", "的"], [],
                                                                   ["新世纪"]]
    out = io.StringIO()
    write_segmented([["共同", "创造"], [], ["新"]], out)
    assert out.getvalue() == "共同  创造\n\n新\n"
    assert parse_segmented(["a\u00a0b  c"]) == [["a\u00a0b", "c"]]  # the scorer splits at ASCII space and U+3000 only


def test_icwb2_oov_is_counted_against_the_whole_training_file(tmp_path):
    from trainer.datasets.segmentation import Icwb2

    (tmp_path / "train.utf8").write_text("共同  创造\n" * 19 + "美好  世纪\n", encoding="utf-8")
    data = Icwb2(train=str(tmp_path / "train.utf8"), val_fraction=0.05, min_count=1)
    data.setup()
    assert len(data.splits["val"]) == 1 and data.train_words == {"共同", "创造", "美好", "世纪"}
    # ... but the word-list features of the validation lines come from the training lines' words alone: 美好 and
    # 世纪 occur only in the validation line, and must not be found there
    data = Icwb2(train=str(tmp_path / "train.utf8"), val_fraction=0.05, min_count=1, word_features=4)
    data.setup()
    val = data.splits["val"].table
    assert val.texts == ["美好世纪"] and not val.inputs[:, -3:].any()


def test_tags_round_trip():
    words = ["迈向", "的", "一九九八年", "新"]
    tags = word_tags(words)
    assert tags.tolist() == [B, E, S, B, M, M, M, E, S]
    assert tags_to_words("".join(words), tags) == words


def test_clauses_end_after_punctuation_and_at_spaces():
    assert split_clauses("你好，世界。再见！") == ["你好，", "世界。", "再见！"]
    assert split_clauses("，，甲乙 丙") == ["，", "，", "甲乙", "丙"]
    assert split_clauses("１２．５％的人") == ["１２．５％的人"]  # no cut inside a number
    assert split_clauses("") == []


# ---- data ----------------------------------------------------------------------------------------------------------
def test_vocabulary_drops_characters_seen_once():
    vocab = Vocabulary.build(["甲乙甲", "丙乙"], min_count=2)
    assert set(vocab.chars) == {"甲", "乙"} and len(vocab) == 4
    assert vocab.encode("甲丙乙").tolist() == [vocab.chars.index("甲") + 2, UNK, vocab.chars.index("乙") + 2]


def test_bigram_vocabulary_keeps_pairs_seen_twice_with_clause_ends_paired_with_padding():
    sentences = [Sentence("甲乙，甲乙", ["甲乙", "，", "甲乙"]), Sentence("丙甲乙", ["丙", "甲乙"])]
    vocab = Vocabulary.build(["甲乙丙，"], 1)
    table = ClauseTable(sentences, vocab, "，", "t")  # clauses 甲乙， | 甲乙 | 丙甲乙
    bigrams = BigramVocabulary.build(table, len(vocab), min_count=2)
    a, b, c, comma = (vocab.encode(ch)[0] for ch in "甲乙丙，")
    V = len(vocab)
    # seen at least twice: ^甲 (twice), 甲乙 (3 times), 乙$ (twice); once: 乙，  ，$  ^丙  丙甲
    assert bigrams.keys.tolist() == sorted([PAD * V + a, a * V + b, b * V + PAD])
    ids = bigrams.encode(table)  # (characters, 2): the pair ending at each character, the pair starting at it
    known = dict(zip(bigrams.keys.tolist(), range(2, len(bigrams))))
    left = [known[PAD * V + a], known[a * V + b], UNK, known[PAD * V + a], known[a * V + b], UNK, UNK, known[a * V + b]]
    right = [known[a * V + b], UNK, UNK, known[a * V + b], known[b * V + PAD], UNK, known[a * V + b], known[b * V + PAD]]
    assert ids[:, 0].tolist() == left and ids[:, 1].tolist() == right
    assert len(bigrams) == 5


def test_bigram_ids_travel_in_x_and_with_the_checkpoint_state(tmp_path):
    path = tmp_path / "pd.txt"
    path.write_text("".join("甲/n  乙/n  ，/w  丙/n  丁/n\n" for _ in range(20)), encoding="utf-8")
    data = PeopleDaily(str(path), val_fraction=0.1, test_fraction=0.1, bigram_min_count=2, batch_size=4, seed=0)
    data.setup()
    assert data.info["bigram_vocab_size"] == len(data.bigrams) == 2 + 7  # ^甲 甲乙 乙， ，$ ^丙 丙丁 丁$
    batch = data.splits["test"].__getitems__([0])
    assert batch["x"].shape == (2, 3, 3) and batch["x"][1, 2].tolist() == [PAD, PAD, PAD]
    assert (batch["x"][:, :2, 1:] >= 2).all()  # every bigram of the test lines was seen in training
    restored = PeopleDaily(str(path), val_fraction=0.1, test_fraction=0.1, bigram_min_count=2)
    restored.load_state_dict(data.state_dict())
    restored.setup()
    assert torch.equal(restored.splits["test"].__getitems__([0])["x"], batch["x"])
    other = data.state_dict()
    other["bigram_keys"] = other["bigram_keys"][:-1]
    fewer = PeopleDaily(str(path), val_fraction=0.1, test_fraction=0.1, bigram_min_count=2)
    fewer.load_state_dict(other)  # state comes before setup (the DataModule contract): setup encodes with it
    fewer.setup()
    assert len(fewer.bigrams) == 2 + 6 and fewer.info["bigram_vocab_size"] == 2 + 6
    assert not torch.equal(fewer.splits["test"].__getitems__([0])["x"], batch["x"])
    chars_only = PeopleDaily(str(path), val_fraction=0.1, test_fraction=0.1, bigram_min_count=0)
    chars_only.setup()
    assert chars_only.info["bigram_vocab_size"] == 0 and chars_only.splits["test"].__getitems__([0])["x"].ndim == 2


def test_clause_table_pads_and_sentence_batches_group_clauses():
    sentences = [Sentence("甲乙，丙", ["甲乙", "，", "丙"]), Sentence("", []), Sentence("丁", ["丁"])]
    vocab = Vocabulary.build(["甲乙丙丁，"], 1)
    table = ClauseTable(sentences, vocab, "，", "t")
    assert table.texts == ["甲乙，", "丙", "丁"] and table.sentence_counts.tolist() == [2, 0, 1]
    batch = SentenceDataset(table, frozenset({"甲乙"})).__getitems__([2, 1, 0])
    assert batch["texts"] == ["丁", "甲乙，", "丙"] and batch["clauses_per_sentence"] == [1, 0, 2]
    assert batch["x"].shape == (3, 3) and batch["lengths"].tolist() == [1, 3, 1]
    assert batch["y"][0].tolist() == [S, IGNORE, IGNORE] and batch["y"][1].tolist() == [B, E, S]
    assert batch["gold"] == [["丁"], [], ["甲乙", "，", "丙"]]
    assert batch["gold_iv"] == [[False], [], [True, False, False]]
    with pytest.raises(UserError, match="line 1 of the text differs from its gold"):
        ClauseTable([Sentence("甲乙", ["甲", "丙"])], vocab, "，", "t")


def test_bucket_batches_cover_everything_with_near_equal_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=1000)
    plan = BucketBatches(lengths, batch_size=32, seed=3, max_tokens=256)
    batches = plan.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for b in batches:
        width = lengths[b].max()
        assert len(b) <= 32 and (len(b) * width <= 256 or len(b) == 1)
        assert width - lengths[b].min() <= 2  # neighbours in length order
    assert plan.batches(0) == batches and plan.batches(1) != batches  # a pure function of (seed, epoch)
    fixed = BucketBatches(lengths, batch_size=32, shuffle=False)
    assert fixed.batches(0) == fixed.batches(5)


# ---- Viterbi and the CRF ----------------------------------------------------------------------------------------------
def _paths(length: int, allowed_pairs, starts, ends):
    for path in itertools.product(range(4), repeat=length):
        if (TAGS[path[0]] in starts and TAGS[path[-1]] in ends
                and all(TAGS[a] + TAGS[b] in allowed_pairs for a, b in zip(path, path[1:]))):
            yield path


def test_viterbi_finds_the_best_allowed_path_of_each_padded_sequence():
    torch.manual_seed(0)
    lengths = torch.tensor([5, 1, 3, 4])
    em = torch.randn(4, 5, 4) * 3
    trans, start, end = transition_mask(TAGS, ALLOWED), tag_mask(TAGS, "sb"), tag_mask(TAGS, "se")
    paths = viterbi(em, lengths, trans, start, end)
    for row, n in enumerate(lengths.tolist()):
        best = max(_paths(n, ALLOWED, "sb", "se"), key=lambda p: sum(em[row, t, p[t]].item() for t in range(n)))
        assert tuple(paths[row, :n].tolist()) == best


def test_crf_nll_is_the_log_partition_minus_the_gold_score():
    torch.manual_seed(1)
    lengths = torch.tensor([4, 2])
    em = torch.randn(2, 4, 4)
    trans = torch.randn(4, 4) + transition_mask(TAGS, ALLOWED)
    start, end = torch.randn(4) + tag_mask(TAGS, "sb"), torch.randn(4) + tag_mask(TAGS, "se")
    gold = torch.tensor([[B, M, E, S], [S, S, 0, 0]])
    expected = 0.0
    for row, n in enumerate(lengths.tolist()):
        def score(p):
            return (start[p[0]] + end[p[-1]] + sum(em[row, t, p[t]] for t in range(n))
                    + sum(trans[p[t - 1], p[t]] for t in range(1, n)))
        everything = torch.logsumexp(torch.stack([score(p) for p in itertools.product(range(4), repeat=n)]), 0)
        expected += float(everything - score(gold[row, :n].tolist()))
    assert float(crf_nll(em, gold, lengths, trans, start, end)) == pytest.approx(expected, rel=1e-5)
    assert FORBIDDEN < -1e3


# ---- the SIGHAN scorer ---------------------------------------------------------------------------------------------
def test_sighan_counts_by_hand():
    truth, test = ["共同", "创造", "美好", "的", "新", "世纪"], ["共同", "创", "造", "美好", "的", "新世纪"]
    counts = dict(zip(COUNTS, line_counts(truth, test, [True, True, True, True, True, False])))
    assert counts["matched"] == 3 and counts["truth"] == 6 and counts["test"] == 6
    assert counts["substitutions"] == 2 and counts["insertions"] == 1 and counts["deletions"] == 1  # as diff -y
    assert counts["oov"] == 1 and counts["oov_matched"] == 0 and counts["iv_matched"] == 3
    s = scores(list(counts.values()))
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5) and s["f1"] == pytest.approx(0.5)


def test_sighan_matches_words_as_strings_like_diff_not_by_offsets():
    # "aaa": truth a|aa, test aa|a: no word has the same span, but diff keeps one common word
    assert len(lcs_alignment(["a", "aa"], ["aa", "a"])) == 1


def test_score_lines_skips_empty_truth_lines_and_reads_ideographic_spaces():
    total = score_lines(["共同"], ["共同  创造", "", "美好\u3000的"], ["共同 创 造", "多余", "美好 的"])
    c = dict(zip(COUNTS, total.tolist()))
    assert c["truth"] == 4 and c["test"] == 5 and c["matched"] == 3 and c["oov"] == 3 and c["iv_matched"] == 1


# ---- the user dictionary -------------------------------------------------------------------------------------------
def test_dictionary_file_errors_name_the_line(tmp_path):
    good = tmp_path / "d.txt"
    good.write_text("# comment\n北京大学,10\n\n,,2\n", encoding="utf-8")
    assert read_user_dictionary(good) == [("北京大学", 10.0), (",", 2.0)]
    for line in ("北京大学", "北京大学,x", "北京大学,-1", "北京大学,0", "北京 大学,2", ",3"):
        bad = tmp_path / "bad.txt"
        bad.write_text(f"好,2\n{line}\n", encoding="utf-8")
        with pytest.raises(UserError) as e:
            read_user_dictionary(bad)
        assert "line 2" in str(e.value) and "word,multiplier" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="not UTF-8"):
        (tmp_path / "gbk.txt").write_bytes("北京,2\n".encode("gbk"))
        read_user_dictionary(tmp_path / "gbk.txt")


def test_dictionary_bonuses_go_to_b_m_e_or_s():
    d = UserDictionary([("北京大学", math.e), ("学", math.e ** 2)])
    bonus = d.bonuses(["在北京大学学习", "学"], 7)
    assert bonus[0, 1, B] == pytest.approx(1) and bonus[0, 2, M] == bonus[0, 3, M] == pytest.approx(1)
    assert bonus[0, 4, E] == pytest.approx(1) and bonus[0, 4, S] == pytest.approx(2)  # overlapping matches add
    assert bonus[0, 5, S] == pytest.approx(2) and bonus[1, 0, S] == pytest.approx(2) and bonus[0, 0].sum() == 0


def test_head_dictionary_keeps_a_split_word_whole_and_splits_a_whole_one(tmp_path):
    """The decoding side of hard decoding, on fixed scores: 甲乙 is split, 丙丁 whole, unless the dictionary says."""
    batch = {"texts": ["甲乙丙丁"], "lengths": torch.tensor([4]), "clauses_per_sentence": [1]}
    probs = torch.tensor([[[.7, .2, .05, .05], [.7, .05, .05, .2], [.1, .8, .05, .05], [.1, .05, .05, .8]]])
    logits = probs.log()
    assert SbmeTagger().decode(logits, batch) == [["甲", "乙", "丙丁"]]
    path = tmp_path / "user.txt"
    path.write_text("甲乙,100\n丙丁,0.01\n", encoding="utf-8")
    assert SbmeTagger(dictionary=str(path)).decode(logits, batch) == [["甲乙", "丙", "丁"]]


# ---- models ---------------------------------------------------------------------------------------------------------
def test_bigram_model_without_bigram_ids_is_a_user_error():
    with pytest.raises(UserError, match="dataset.bigram_min_count"):
        SegResFCN(50, bigram_vocab_size=10)(torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("model, features", [
    (SegFCN(50), 1),
    (SegFCN(50), 3),
    (SegResFCN(50, embedding_dim=16, bigram_vocab_size=97, bigram_dim=8, channels=16, dilations=(1, 2)), 3),
    (SegResFCN(50, embedding_dim=16, channels=16, dilations=(1,), crf=False), 1),
])
def test_a_clause_scores_the_same_alone_or_padded_in_a_batch(model, features):
    """Characters (B, T), or (B, T, 3) with bigram ids as the data gives them with dataset.bigram_min_count > 0."""
    model.eval()
    torch.manual_seed(0)
    short, long = torch.randint(2, 50, (1, 4, features)), torch.randint(2, 50, (1, 9, features))
    if features == 1:
        short, long = short[..., 0], long[..., 0]
    pad = (0, 0, 0, 5) if features == 3 else (0, 5)
    batch = torch.cat([torch.nn.functional.pad(short, pad), long])
    alone, together = model(short), model(batch)
    if isinstance(alone, dict):
        alone, together = alone["emissions"], together["emissions"]
    assert together.shape == (2, 9, 4)
    torch.testing.assert_close(together[0, :4], alone[0], rtol=1e-5, atol=1e-5)
