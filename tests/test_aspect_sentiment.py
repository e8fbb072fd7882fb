"""Aspect sentiment (problem 1): the contest and JSON-lines readers, tags and windows, decoding on hand-made scores,
the contest's metric on hand-counted cases, the DataModule state, bad input, and the staged pipeline through the CLI
on toy corpora the tests write (CRLF + TAB contest files, JSON lines)."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from torch import nn

from conftest import cli, latest_run
from trainer.datasets.absa import BdciAbsa, EntityMatcher, SentenceDataset, window_starts
from trainer.datasets.absa_formats import Aspect, Sentence, read_contest, read_jsonl, read_new_sentences
from trainer.errors import UserError
from trainer.models.heads.absa_score import scores, sentence_counts
from trainer.models.heads.entity_polarity import EntityPolarityTagger, pairs_of
from trainer.models.span_polarity import SpanPolarity, gold_spans

# ---- a toy corpus: entity names, and opinion phrases that decide the polarity of the entity before them --------
ENTITIES = ["宝马", "奥迪", "大众速腾", "长安", "吉利帝豪", "丰田", "本田雅阁", "福克斯"]
OPINIONS = {"pos": ["很好", "不错", "真棒"], "neu": ["今天到店", "发布了", "上市了"], "neg": ["太差", "很烂", "真糟"]}
FILLER = ["我觉得", "听说", "其实", "朋友说"]


def toy_sentence(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    text, labels = rng.choice(FILLER), []
    for _ in range(rng.randint(1, 2)):
        entity, polarity = rng.choice(ENTITIES), rng.choice(["pos", "neu", "neg"])
        if any(entity == e for e, _ in labels):
            continue
        text += entity + rng.choice(OPINIONS[polarity]) + "，"
        labels.append((entity, polarity))
    return text + "。", labels


def write_contest(folder, n: int, seed: int, texts: str = "Train.csv", labels: str = "Label.csv"):
    rng = random.Random(seed)
    rows, label_rows = [], []
    for i in range(n):
        text, pairs = toy_sentence(rng)
        rows.append(f"S{i}\t{text}")
        label_rows += [f"S{i}\t{view}\t{polarity}" for view, polarity in pairs]
    (folder / texts).write_bytes(("SentenceId\tContent\r\n" + "".join(r + "\r\n" for r in rows)).encode())
    (folder / labels).write_bytes(("SentenceId\tView\tOpinion\r\n" + "".join(r + "\r\n" for r in label_rows)).encode())


def write_jsonl(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text, pairs = toy_sentence(rng)
            aspects = [{"term": v, "start": text.index(v), "end": text.index(v) + len(v), "polarity": {
                "pos": "positive", "neu": "neutral", "neg": "negative"}[p]} for v, p in pairs]
            f.write(json.dumps({"id": f"J{i}", "text": text, "aspects": aspects}, ensure_ascii=False) + "\n")


# ---- reading ---------------------------------------------------------------------------------------------------
def test_contest_files_with_crlf_and_tabs_are_read_with_every_view(tmp_path):
    (tmp_path / "T.csv").write_bytes("SentenceId\tContent\r\nS1\t宝马和\"奥迪\"，宝马好\r\nS2\t没有车\r\n".encode())
    (tmp_path / "L.csv").write_bytes("SentenceId\tView\tOpinion\r\nS1\t宝马\tpos\r\nS1\t奥迪\tneu\r\n".encode())
    sentences, notes = read_contest(tmp_path / "T.csv", tmp_path / "L.csv")
    assert [s.text for s in sentences] == ["宝马和\"奥迪\"，宝马好", "没有车"] and not notes  # quotes are text
    assert [(a.term, a.polarity) for a in sentences[0].aspects] == [("宝马", "pos"), ("奥迪", "neu")]
    assert sentences[1].aspects == []  # no Label row: no View


@pytest.mark.parametrize("label_row, message", [
    ("S9\t宝马\tpos", "L.csv line 3: SentenceId S9 is not in"),
    ("S1\t宝马\tgood", "L.csv line 3: polarity 'good' is not one of pos, neu, neg"),
    ("S1\t宝马", "L.csv line 3: 2 TAB-separated field(s), expected 3"),
])
def test_bad_label_rows_name_the_file_and_line(tmp_path, label_row, message):
    (tmp_path / "T.csv").write_bytes("SentenceId\tContent\r\nS1\t宝马好\r\n".encode())
    (tmp_path / "L.csv").write_bytes(f"SentenceId\tView\tOpinion\r\nS1\t宝马\tneu\r\n{label_row}\r\n".encode())
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_contest(tmp_path / "T.csv", tmp_path / "L.csv")


def test_unknown_ids_can_be_skipped_and_are_reported(tmp_path):
    (tmp_path / "T.csv").write_bytes("SentenceId\tContent\r\nS1\t宝马好\r\n".encode())
    (tmp_path / "L.csv").write_bytes("SentenceId\tView\tOpinion\r\nS1\t宝马\tpos\r\nS7\t奥迪\tneg\r\n".encode())
    sentences, notes = read_contest(tmp_path / "T.csv", tmp_path / "L.csv", unknown_ids="skip")
    assert len(sentences) == 1 and len(notes) == 1 and "line 3 (S7)" in notes[0]


def test_a_gbk_file_is_one_line_naming_the_line(tmp_path):
    (tmp_path / "T.csv").write_bytes("SentenceId\tContent\r\nS1\t好\r\n".encode() + "S2\t宝马很好\r\n".encode("gbk"))
    (tmp_path / "L.csv").write_bytes("SentenceId\tView\tOpinion\r\n".encode())
    with pytest.raises(UserError, match=r"T.csv line 3: not UTF-8 .*GBK.*iconv"):
        read_contest(tmp_path / "T.csv", tmp_path / "L.csv")


def test_json_lines_read_spans_and_reject_a_term_that_is_not_at_its_span(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text(json.dumps({"text": "the food was great", "aspects": [
        {"term": "food", "start": 4, "end": 8, "polarity": "positive"}]}) + "\n\n"
        + json.dumps({"text": "ok", "aspects": []}) + "\n", encoding="utf-8")
    sentences = read_jsonl(good)
    assert sentences[0].id == "1" and sentences[1].id == "3"  # the line number, empty lines skipped
    assert (sentences[0].aspects[0].start, sentences[0].aspects[0].polarity) == (4, "pos")
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"text": "the food", "aspects": [{"term": "food", "start": 0, "end": 4,
                                                                 "polarity": "neg"}]}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"b.jsonl line 1: text\[0:4\] is 'the ', not the term 'food'"):
        read_jsonl(bad)


def test_new_sentences_one_a_line_or_in_the_train_csv_format(tmp_path):
    (tmp_path / "a.txt").write_text("宝马好\n\n奥迪差\n", encoding="utf-8")
    assert [(s.id, s.text) for s in read_new_sentences(tmp_path / "a.txt")] == [("1", "宝马好"), ("3", "奥迪差")]
    (tmp_path / "b.csv").write_bytes("SentenceId\tContent\r\nX1\t宝马好\r\n".encode())
    assert [(s.id, s.text) for s in read_new_sentences(tmp_path / "b.csv")] == [("X1", "宝马好")]


# ---- tags, windows, splits, state -------------------------------------------------------------------------------
def contest_data(folder, n=60, **kwargs) -> BdciAbsa:
    write_contest(folder, n, seed=0)
    return BdciAbsa(root=str(folder), min_count=1, **kwargs)


def test_tags_cover_every_occurrence_and_a_missing_view_is_counted(tmp_path, caplog):
    (tmp_path / "Train.csv").write_bytes("SentenceId\tContent\r\nS1\t长安逸动和长安，\r\nS2\t好车\r\n".encode())
    (tmp_path / "Label.csv").write_bytes(
        "SentenceId\tView\tOpinion\r\nS1\t长安\tneg\r\nS1\t长安逸动\tpos\r\nS2\t宝马\tneu\r\n".encode())
    data = BdciAbsa(root=str(tmp_path), min_count=1, val_fraction=0.0, test_fraction=0.0)
    data.setup()
    train = data.splits["train"]
    tags = {s.id: t.tolist() for s, t in zip(train.source.sentences, train.source.tags)}
    assert tags["S1"] == [1, 1, 1, 1, 0, 3, 3, 0]  # 长安 inside 长安逸动 keeps the longer View's tag
    assert train.source.missing == 1 and "1 of 3 labelled Views do not occur" in caplog.text


def test_long_texts_are_covered_by_overlapping_windows_and_stitched_back(tmp_path):
    assert window_starts(10, 4, 2) == [0, 2, 4, 6] and window_starts(9, 4, 3) == [0, 3, 5] and \
        window_starts(3, 4, 2) == [0]
    data = contest_data(tmp_path, window=8, stride=5)
    data.setup()
    test: SentenceDataset = data.splits["test"]
    long = max(range(len(test)), key=lambda i: len(test.enc.sentences[i].text))
    batch = test.__getitems__([long, 0])
    assert len(test.enc.sentences[long].text) > 8 and batch["x"].shape[1] == 8  # never cut off, never wider
    n = int(batch["sentence_lengths"][0])
    stitched = batch["x"].reshape(-1)[batch["stitch"][0, :n]]
    assert stitched.tolist() == test.enc.ids[long].tolist()  # every character read back from a window


def test_splits_are_seeded_and_the_unseen_split_holds_only_unseen_views(tmp_path):
    a, b = contest_data(tmp_path), BdciAbsa(root=str(tmp_path), min_count=1)
    assert [s.id for s in a._parts()["test"]] == [s.id for s in b._parts()["test"]]
    write_contest(tmp_path, 300, seed=1)
    unseen = BdciAbsa(root=str(tmp_path), min_count=1, test_views="unseen", unseen_fraction=0.3)
    parts = unseen._parts()
    train_views = {a.term for s in parts["train"] + parts["val"] for a in s.aspects}
    assert parts["test"] and all(a.term not in train_views for s in parts["test"] for a in s.aspects)


def test_the_other_rounds_labelled_sentences_join_the_training_split_only(tmp_path):
    write_contest(tmp_path, 50, seed=0)
    write_contest(tmp_path, 30, seed=9, texts="Train_first.csv", labels="Label_first.csv")
    parts = BdciAbsa(root=str(tmp_path), extra_round="first")._parts()
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (70, 5, 5)
    with pytest.raises(UserError, match="extra_round=final: must be null or the other round"):
        BdciAbsa(root=str(tmp_path), extra_round="final")


def test_match_flags_on_training_text_come_from_the_other_folds_views(tmp_path):
    write_contest(tmp_path, 100, seed=0)
    with open(tmp_path / "Train.csv", "ab") as f:
        f.write("S_only\t我觉得雪铁龙C5很好。\r\n".encode())
    with open(tmp_path / "Label.csv", "ab") as f:
        f.write("S_only\t雪铁龙C5\tpos\r\n".encode())
    data = BdciAbsa(root=str(tmp_path), min_count=1, val_fraction=0.0, test_fraction=0.0, match_feature=True)
    data.setup()
    enc = data.splits["train"].source
    flags = {s.id: f.tolist() for s, f in zip(enc.sentences, enc.flags)}
    assert flags["S_only"] == [1] * 11  # its only View is in no other fold: not marked, as an unseen View would not be
    assert any(2 in f for f in flags.values())  # the common Views are
    batch = data.splits["train"].__getitems__([0, 1])
    assert batch["x"].shape[-1] == 2 and data.info["match_flags"] == 4


def test_composed_matches_join_brand_and_model_and_run_on_over_model_codes():
    matcher = EntityMatcher(["大众", "大众速腾", "朗逸", "宝马", "宝马x5", "奥迪", "奥迪a4", "帝豪", "起亚k9"], compose=True,
                            blocked=frozenset({"4s"}))
    def found(text):
        return [text[a:b] for a, b in matcher(text)]
    assert found("大众朗逸和宝马奥迪") == ["大众朗逸", "宝马", "奥迪"]  # brand + model joins; two brands stay two
    assert found("朗逸大众") == ["朗逸", "大众"]  # a model before a brand is no brand + model
    assert found("帝豪ec7出口，起亚k900上市") == ["帝豪ec7", "起亚k900"]  # a code with a letter; a code run on
    assert found("宝马4s店的帝豪2016款，帝豪1.5t") == ["宝马", "帝豪", "帝豪"]  # blocked, digits only, a dot
    assert found("大众朗逸xl") == ["大众朗逸xl"]
    assert [(a, b) for a, b in EntityMatcher(["大众", "大众速腾", "朗逸"])("大众朗逸")] == [(0, 2), (2, 4)]
    assert EntityMatcher(["大众", "大众", "朗逸"], compose=True)("大众朗逸") == [(0, 2), (2, 4)]  # no brand twice
    labelled = [Sentence("1", "宝马4s店", []), Sentence("2", "帝豪ec7，宝马x7", [Aspect("帝豪ec7", "neu")]),
                Sentence("3", "奥迪a6", [])]
    # codes after a match, but not the ones a label joined to it (the list may lack 帝豪ec7: an entity file)
    assert EntityMatcher(["宝马", "帝豪"]).codes_after(labelled) == {"4s", "x7"}


def test_composition_learns_its_blocked_codes_from_training_text_and_carries_them(tmp_path):
    write_contest(tmp_path, 60, seed=0)
    with open(tmp_path / "Train.csv", "ab") as f:
        f.write("S_4s\t宝马4s店今天到店，。\r\n".encode())
    data = BdciAbsa(root=str(tmp_path), min_count=1, compose_matches=True, val_fraction=0.0, test_fraction=0.0)
    data.setup()
    assert data.blocked_codes == {"4s"}
    other = BdciAbsa(root=str(tmp_path), min_count=1, compose_matches=True)
    other.load_state_dict(torch.load(_saved(data.state_dict(), tmp_path), weights_only=True))
    assert other.blocked_codes == {"4s"}
    dataset = other.predict_dataset(str(_lines(tmp_path, ["宝马4s店的宝马x7很好。"])))
    assert [dataset.enc.sentences[0].text[a:b] for a, b in dataset.matches[0]] == ["宝马", "宝马x7"]


def test_a_checkpoint_from_before_composition_keeps_its_matches_uncomposed(tmp_path, caplog):
    write_contest(tmp_path, 60, seed=0)
    data = BdciAbsa(root=str(tmp_path), min_count=1, compose_matches=True)
    data.setup()
    state = data.state_dict()
    del state["blocked_codes"]
    other = BdciAbsa(root=str(tmp_path), min_count=1, compose_matches=True)
    other.load_state_dict(state)
    assert not other.compose_matches and "predates dataset.compose_matches" in caplog.text
    dataset = other.predict_dataset(str(_lines(tmp_path, ["宝马4s店。"])))
    assert dataset.matches[0] == [(0, 2)]


def _lines(folder, lines):
    (folder / "new.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "new.txt"


def test_state_travels_through_torch_load_and_is_reused_before_setup(tmp_path):
    data = contest_data(tmp_path, unlabelled="test", view="lm")
    data.setup()
    state = data.state_dict()
    torch.save(state, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = BdciAbsa(root=str(tmp_path), min_count=1000, view="tag", unlabelled="test")  # would keep no character
    other.load_state_dict(state)
    other.setup()
    assert other.vocab.chars == data.vocab.chars and other.info["vocab_size"] == len(data.vocab)
    # pseudo-labels: added to training, carried by the state, restored before setup
    n_train = len(other.splits["train"])
    text = other.splits["unlabelled"].enc.sentences[0].text
    view = next(e for e in ENTITIES if e in text)
    span = [text.index(view), text.index(view) + len(view), 1]
    other.set_pseudo_labels("unlabelled", [0], [[span]])
    assert len(other.splits["train"]) == n_train + 1
    again = BdciAbsa(root=str(tmp_path), min_count=1, unlabelled="test")
    again.load_state_dict(torch.load(_saved(other.state_dict(), tmp_path), weights_only=True))
    again.setup()
    enc = again.splits["train"].source
    assert enc.sentences[-1].id.startswith("pseudo:") and enc.tags[-1][span[0]:span[1]].tolist() == [1] * len(view)


def _saved(state, folder):
    torch.save(state, folder / "p.pt")
    return folder / "p.pt"


# ---- decoding on hand-made scores --------------------------------------------------------------------------------
def logits(rows: list[list[float]]) -> torch.Tensor:
    """(1, T, 4) scores from per-character probabilities of tags 0..3."""
    return torch.tensor(rows).clamp(min=1e-6).log()[None]


def batch_for(text: str, matches=()) -> dict:
    n = len(text)
    return {"stitch": torch.arange(n)[None], "sentence_lengths": torch.tensor([n]), "texts": [text],
            "matches": [list(matches)]}


def test_viterbi_keeps_to_the_allowed_transitions():
    head = EntityPolarityTagger(entity_pass=False)
    # character by character the best tags are 1, 2, 0; but 1 -> 2 needs a 0 between them: the best allowed path
    # is 2, 2, 0 (0.25 * 0.6 against 1, 1, 0: 0.6 * 0.2)
    scores_ = logits([[0.1, 0.6, 0.25, 0.05], [0.1, 0.2, 0.6, 0.1], [0.9, 0.03, 0.04, 0.03]])
    first, second, _ = head.tag_paths(scores_, batch_for("ABC"))
    assert first.tolist() == second.tolist() == [[2, 2, 0]]
    assert head.decode(scores_, batch_for("ABC")) == [[("AB", "neu")]]


def test_the_entity_list_pass_finds_a_listed_entity_the_model_missed_and_polarity_is_the_majority():
    head = EntityPolarityTagger(entity_bonus=10.0, boundary_bonus=2.0)
    # the model sees no entity in 'xx宝马x' (first pass all 0), but leans positive inside it
    scores_ = logits([[0.9, 0.04, 0.03, 0.03]] * 2 + [[0.7, 0.2, 0.05, 0.05]] * 2 + [[0.9, 0.04, 0.03, 0.03]])
    assert EntityPolarityTagger(entity_pass=False).decode(scores_, batch_for("xx宝马x")) == [[]]
    assert head.decode(scores_, batch_for("xx宝马x", [(2, 4)])) == [[("宝马", "pos")]]
    # the first pass tags A positive and CD negative; the listed ABCD is one entity, of the majority polarity
    scores_ = logits([[0.1, 0.8, 0.05, 0.05], [0.8, 0.1, 0.05, 0.05]] + [[0.1, 0.05, 0.05, 0.8]] * 2)
    first, _, _ = head.tag_paths(scores_, batch_for("ABCD"))
    assert first.tolist() == [[1, 0, 3, 3]]
    assert head.decode(scores_, batch_for("ABCD", [(0, 4)])) == [[("ABCD", "neg")]]


def test_tag_bias_moves_the_decision_and_must_name_every_tag():
    # the model leans positive on AB (log 0.5 against log 0.3 for neutral): a bias of +1 on neutral turns it over
    scores_ = logits([[0.1, 0.5, 0.3, 0.1]] * 2)
    assert EntityPolarityTagger(entity_pass=False).decode(scores_, batch_for("AB")) == [[("AB", "pos")]]
    biased = EntityPolarityTagger(entity_pass=False, tag_bias=[0, 0, 1, 0])
    assert biased.decode(scores_, batch_for("AB")) == [[("AB", "neu")]]
    with pytest.raises(ValueError, match="one number per tag"):
        EntityPolarityTagger(tag_bias=[0, 1])


def test_back_to_back_entities_are_cut_at_the_entity_list_matches_on_request():
    head = EntityPolarityTagger(split_at_matches=True)
    scores_ = logits([[0.1, 0.05, 0.8, 0.05]] * 4)
    assert head.decode(scores_, batch_for("宝马奔驰", [(0, 2), (2, 4)])) == [[("宝马", "neu"), ("奔驰", "neu")]]
    assert EntityPolarityTagger().decode(scores_, batch_for("宝马奔驰", [(0, 2), (2, 4)])) == [[("宝马奔驰", "neu")]]
    # a run the matches do not cover end to end stays whole (宝马X5 with only 宝马 listed)
    assert head.decode(scores_, batch_for("宝马X5", [(0, 2)])) == [[("宝马X5", "neu")]]


def test_a_view_mentioned_twice_takes_the_majority_of_its_mentions():
    assert pairs_of("宝马宝马宝马", [(0, 2, 1), (2, 4, 3), (4, 6, 3)]) == [("宝马", "neg")]
    assert pairs_of("宝马奥迪宝马", [(0, 2, 1), (2, 4, 2), (4, 6, 3)]) == [("宝马", "pos"), ("奥迪", "neu")]


def test_pseudo_labels_are_spans_with_the_least_sure_character_as_confidence():
    head = EntityPolarityTagger(entity_pass=False)
    scores_ = logits([[0.9, 0.04, 0.03, 0.03], [0.05, 0.85, 0.05, 0.05], [0.05, 0.6, 0.3, 0.05]])
    labels, confidence = head.pseudo_label(scores_, batch_for("ABC"))
    assert labels == [[[1, 3, 1]]] and math.isclose(float(confidence[0]), 0.6, rel_tol=1e-4)


# ---- the span classifier on hand-made states ----------------------------------------------------------------------
def test_gold_spans_are_the_runs_of_one_non_zero_tag_with_padding_as_none():
    tags = torch.tensor([[0, 1, 1, 0, 2, 3, 3, -100], [2, 2, 0, 0, 0, 0, 0, 1]])
    assert gold_spans(tags).tolist() == [[0, 1, 3, 1], [0, 4, 5, 2], [0, 5, 7, 3], [1, 0, 2, 2], [1, 7, 8, 1]]
    assert gold_spans(torch.zeros(2, 3, dtype=torch.long)).shape == (0, 4)


def test_span_features_pool_the_span_and_its_context_inside_the_sentence():
    span = SpanPolarity(input_dim=1, context=2, attention=False)
    states = torch.arange(8, dtype=torch.float)[None, :, None]  # the state of character p is p
    spans = torch.tensor([[0, 3, 5], [0, 1, 2], [0, 5, 6]])  # rows, starts, ends; the sentence has 7 characters
    mean, top, left, right = span.features(states, spans, torch.tensor([7])).T.tolist()
    assert mean == [3.5, 1.0, 5.0] and top == [4.0, 1.0, 5.0]
    assert left == [1.5, 0.0, 3.5]  # the context is cut at the sentence's start
    assert right == [5.5, 2.5, 6.0]  # ... and at its end (7 characters: 7 is padding)
    assert span(states, spans, torch.tensor([7])).shape == (3, 3)


def test_attention_reads_only_the_window_inside_the_sentence():
    span = SpanPolarity(input_dim=1, context=1, attention=True)
    with torch.no_grad():
        span.position.copy_(torch.tensor([0.0, 0.0, 50.0]))  # all weight on the character after the span
    states = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]])[..., None]
    with torch.no_grad():
        after = span.features(states, torch.tensor([[0, 1, 3]]), torch.tensor([4]))[0, 4]
        # a span at the sentence's end: nothing after it, so the weight goes to the window's others, never padding
        at_end = span.features(states, torch.tensor([[0, 3, 4]]), torch.tensor([4]))[0, 4]
    assert math.isclose(float(after), 4.0, rel_tol=1e-4) and 3.0 <= float(at_end) <= 4.0


def test_the_tagger_returns_its_states_and_its_span_classifier_on_request():
    from trainer.models.bigru_tagger import BiGRUTagger

    x = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]])
    assert torch.is_tensor(BiGRUTagger(10, embedding_dim=8, hidden=[6, 4])(x))
    out = BiGRUTagger(10, embedding_dim=8, hidden=[6, 4], span_classifier=True)(x)
    assert out["emissions"].shape == (2, 4, 5) and out["states"].shape == (2, 4, 10)
    assert isinstance(out["span"], SpanPolarity) and "transitions" not in out
    out = BiGRUTagger(10, embedding_dim=8, hidden=[6, 4], span_classifier=True, span_embedding=True, crf=True)(x)
    assert out["states"].shape == (2, 4, 18) and "transitions" in out  # the embedding's 8 as well
    out = BiGRUTagger(10, embedding_dim=8, hidden=[6, 4], span_classifier=True, span_states=False, span_ngrams=50,
                      span_ngram_dim=3)(x)
    assert out["states"].shape == (2, 4, 3)  # the n-gram bag alone
    with pytest.raises(UserError, match="reads nothing"):
        BiGRUTagger(10, span_classifier=True, span_states=False)


def test_hashed_ngrams_are_the_same_wherever_the_same_characters_start_and_stop_at_the_padding():
    from trainer.models.span_polarity import _MULTIPLIER, _PRIME, HashedCharNgrams

    torch.manual_seed(0)
    ngrams = HashedCharNgrams(buckets=1000, dim=4, max_order=3)
    x = torch.tensor([[5, 6, 7, 0, 0], [9, 5, 6, 7, 0], [5, 6, 8, 0, 0]])
    out = ngrams(x)
    assert torch.equal(out[0, 0], out[1, 1])  # 5, 56, 567 both
    assert not torch.allclose(out[0, 0], out[2, 0])  # 567 against 568
    assert torch.equal(out[0, 1], out[1, 2]) and torch.equal(out[0, 2], out[1, 3])  # 6, 67 / 7 alone: no pad n-gram
    assert not out[0, 3:].any()
    unigram_row = ngrams.embedding.weight[(7 + 1) * _MULTIPLIER % _PRIME % 1000]
    assert torch.equal(out[0, 2], unigram_row)


def test_a_span_classifier_without_inside_reads_the_context_alone():
    torch.manual_seed(0)
    for attention in (False, True):
        span = SpanPolarity(input_dim=3, context=2, attention=attention, inside=False).eval()
        states = torch.randn(1, 7, 3)
        changed = states.clone()
        changed[0, 2:4] += 5.0  # the span's own states
        spans, lengths = torch.tensor([[0, 2, 4]]), torch.tensor([7])
        assert torch.allclose(span(states, spans, lengths), span(changed, spans, lengths))
        changed[0, 4] += 5.0  # the character after it
        assert not torch.allclose(span(states, spans, lengths), span(changed, spans, lengths))
    with pytest.raises(ValueError, match="context=0"):
        SpanPolarity(input_dim=3, context=0, inside=False)


def test_the_linear_context_classifier_reads_the_masked_window_as_the_baseline_does():
    from trainer.models.context_polarity import MASK, ContextNgramPolarity

    span = ContextNgramPolarity(buckets=1000, context=2)
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0]])  # 5 characters, then padding
    spans, lengths = torch.tensor([[0, 2, 4], [0, 0, 1]]), torch.tensor([5])
    # the two characters before the View, a mask for the View, the two after; nothing outside the sentence
    assert span.windows(ids, spans, lengths).tolist() == [[7, 8, MASK, 11, 0], [0, 0, MASK, 8, 9]]
    k, bucket, value = span.features(ids, spans, lengths)
    for row in (0, 1):  # each window's vector has unit length
        assert math.isclose(float(value[k == row].square().sum()), 1.0, rel_tol=1e-5)
    assert int((k == 0).sum()) == 4 + 3 + 2 and int((k == 1).sum()) == 3 + 2 + 1  # its 1-, 2- and 3-grams
    # what it reads is the context: changing the View leaves the scores alone, changing a neighbour does not
    with torch.no_grad():
        span.weight.normal_()
    states = ids[..., None].float()
    changed = states.clone()
    changed[0, 2:4] = 30.0
    assert torch.equal(span(states, spans, lengths)[0], span(changed, spans, lengths)[0])
    changed[0, 4] = 30.0
    assert not torch.allclose(span(states, spans, lengths)[0], span(changed, spans, lengths)[0])


def test_sublinear_counts_weigh_a_repeated_ngram_less_than_its_count():
    from trainer.models.context_polarity import ContextNgramPolarity

    ids = torch.tensor([[5, 5, 5, 5, 9]])  # the View is the last character; 5 four times before it
    spans, lengths = torch.tensor([[0, 4, 5]]), torch.tensor([5])
    k, bucket, value = ContextNgramPolarity(buckets=1 << 16, context=4, max_order=1).features(ids, spans, lengths)
    weights = sorted(value.tolist())  # the mask once, 5 four times
    assert len(weights) == 2 and math.isclose(weights[1] / weights[0], 1.0 + math.log(4.0), rel_tol=1e-5)


def test_the_tagger_hands_its_linear_classifier_the_character_ids():
    from trainer.models.bigru_tagger import BiGRUTagger
    from trainer.models.context_polarity import ContextNgramPolarity

    x = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]])
    out = BiGRUTagger(10, embedding_dim=8, hidden=[6, 4], span_classifier=True, span_linear=True, span_ngrams=64,
                      span_context=3)(x)
    assert isinstance(out["span"], ContextNgramPolarity) and torch.equal(out["states"][..., 0], x.float())
    loss = EntityPolarityTagger().loss(out, {"y": torch.tensor([[0, 2, 2, -100], [3, 0, -100, -100]]),
                                             "lengths": torch.tensor([3, 2])})
    loss.backward()
    assert out["span"].weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="span_ngrams > 0"):
        BiGRUTagger(10, span_classifier=True, span_linear=True)


def right_context_classifier(neutral_bias: float = 0.0) -> SpanPolarity:
    """A span classifier that reads only the mean state after the span: positive when it is positive, negative
    when negative, neutral (score 0.5) otherwise."""
    span = SpanPolarity(input_dim=1, context=2, attention=False)
    linear = nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
        linear.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
        span.neutral_bias.fill_(neutral_bias)
    span.mlp = linear
    return span


def test_a_span_classifier_decides_each_found_views_polarity_instead_of_the_tags():
    # the tagger finds AB (neutral tags) and DE (positive tags); the states after them say positive and negative
    probs = [[0.1, 0.05, 0.8, 0.05]] * 2 + [[0.9, 0.04, 0.03, 0.03]] + [[0.1, 0.8, 0.05, 0.05]] * 2 + \
        [[0.9, 0.04, 0.03, 0.03]] * 2
    states = torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0, -3.0, -3.0])[None, :, None]
    outputs = {"emissions": logits(probs), "states": states, "span": right_context_classifier()}
    batch = batch_for("ABxDEyy")
    assert EntityPolarityTagger().decode(outputs["emissions"], batch) == [[("AB", "neu"), ("DE", "pos")]]
    assert EntityPolarityTagger().decode(outputs, batch) == [[("AB", "pos"), ("DE", "neg")]]
    # the old way on the same outputs, on request
    assert EntityPolarityTagger(polarity="tags").decode(outputs, batch) == [[("AB", "neu"), ("DE", "pos")]]
    # the classifier's saved neutral bias turns the weaker call over (AB: 1 against 0.5 + 1)
    outputs["span"] = right_context_classifier(neutral_bias=1.0)
    assert EntityPolarityTagger().decode(outputs, batch) == [[("AB", "neu"), ("DE", "neg")]]
    with pytest.raises(ValueError, match="polarity=span"):
        EntityPolarityTagger(polarity="span")


def test_the_span_loss_trains_on_the_gold_views_beside_the_tags():
    head = EntityPolarityTagger(span_class_weight=[1.0, 0.2, 1.0])
    span = SpanPolarity(input_dim=2)
    y = torch.tensor([[0, 1, 1, 0, 2, -100]])
    outputs = {"emissions": torch.randn(1, 6, 5, requires_grad=True),
               "states": torch.randn(1, 6, 2, requires_grad=True), "span": span}
    batch = {"y": y, "lengths": torch.tensor([5])}
    loss = head.loss(outputs, batch)
    loss.backward()
    assert outputs["states"].grad.abs().sum() > 0 and span.mlp[0].weight.grad is not None
    tags_only = head.loss(outputs["emissions"], batch)
    assert float(loss.detach()) > float(tags_only.detach())
    outputs["states"].grad = None
    EntityPolarityTagger(span_detach=True).loss(outputs, batch).backward()  # the tagger learns from its tags only
    assert outputs["states"].grad is None
    with pytest.raises(ValueError, match="one weight per polarity"):
        EntityPolarityTagger(span_class_weight=[1.0, 2.0])


def test_the_neutral_bias_is_chosen_on_validation_saved_and_used_elsewhere():
    head = EntityPolarityTagger(neutral_bias_grid=[0.0, 2.0])
    probs = [[0.1, 0.05, 0.8, 0.05]] * 2 + [[0.9, 0.04, 0.03, 0.03]]
    span = right_context_classifier()
    outputs = {"emissions": logits(probs), "states": torch.tensor([0.0, 0.0, 1.0])[None, :, None], "span": span}
    batch = {**batch_for("ABx"), "gold": [[("AB", "neu")]], "gold_unseen": [[False]],
             "y": torch.tensor([[2, 2, 0]])}
    head.reset()
    head.split = "val"
    head.update(outputs, batch)
    m = head.compute()  # bias 0 calls AB positive (1 > 0.5); bias 2 neutral, which is right
    assert (m["f1"], m["neutral_bias"], m["span_acc"]) == (1.0, 2.0, 1.0)
    head.on_validation_end("val", None)
    assert float(span.neutral_bias) == 2.0 and "neutral_bias" in span.state_dict()  # saved with the model
    head.reset()
    head.split = "test"
    head.update(outputs, {**batch, "gold": [[("AB", "pos")]]})
    m = head.compute()
    assert (m["f1"], m["neutral_bias"]) == (0.0, 2.0)


# ---- the metric on hand-counted cases ---------------------------------------------------------------------------
def test_triple_f1_counts_wrong_polarity_missed_and_extra_views():
    gold, pred = [("A", "pos"), ("B", "neu")], [("A", "pos"), ("B", "neg"), ("C", "neu")]
    m = scores(sentence_counts(gold, pred, [False, True]) + sentence_counts([("D", "neg")], [], [True]))
    # triples: 1 right of 3 predicted and 3 gold; Views: A, B right of 3 predicted and 3 gold
    assert math.isclose(m["precision"], 1 / 3) and math.isclose(m["recall"], 1 / 3) and math.isclose(m["f1"], 1 / 3)
    assert math.isclose(m["entity_f1"], 2 / 3) and math.isclose(m["polarity_acc"], 1 / 2)
    assert math.isclose(m["unseen_recall"], 1 / 2)  # B found, D missed
    assert "unseen_recall" not in scores(sentence_counts(gold, gold))


def test_the_head_scores_batches_as_the_contest_does():
    head = EntityPolarityTagger()
    head.reset()
    scores_ = logits([[0.1, 0.8, 0.05, 0.05]] * 2 + [[0.9, 0.04, 0.03, 0.03]])
    batch = {**batch_for("宝马x", [(0, 2)]), "gold": [[("宝马", "pos"), ("奥迪", "neg")]],
             "gold_unseen": [[False, True]]}
    head.update(scores_, batch)
    m = head.compute()
    assert (m["precision"], m["recall"], m["unseen_recall"]) == (1.0, 0.5, 0.0)


# ---- the staged pipeline through the CLI --------------------------------------------------------------------------
TINY = ["stages.lm.trainer.max_epochs=1", "stages.lm.model.hidden=16", "stages.lm.model.embedding_dim=16",
        "model.embedding_dim=16", "model.hidden=[32,16]", "dataset.min_count=2", "dataset.batch_size=16",
        "optim.lr=1e-2", "trainer.max_epochs=8", "trainer.progress=false", "trainer.log_every_n_steps=20"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("absa")
    write_contest(root, 240, seed=3)
    write_jsonl(root / "train.jsonl", 240, seed=4)
    return root


# each found View's polarity: the majority of its tags, or the span classifier's (with a neutral bias tuned)
POLARITY = {"tags": ["model.span_classifier=false"],
            "span": ["model.span_classifier=true", "model.span_hidden=16", "head.neutral_bias_grid=[0,1]"]}


@pytest.fixture(scope="module", params=sorted(POLARITY))
def trained(workdir, corpus, request):
    cli(workdir, "task=aspect_sentiment", f"dataset.root={corpus}", *TINY, *POLARITY[request.param])
    return latest_run(workdir, "aspect_sentiment")


def test_the_staged_pipeline_learns_the_toy_corpus(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["monitor"] == "val/f1" and results["test"]["test/f1"] > 0.85, results
    span = "model.span_classifier=true" in (trained / "command.txt").read_text()
    assert ("test/span_acc" in results["test"]) == span
    assert (trained / "checkpoints" / "best-lm.pt").is_file()
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    lm = torch.load(trained / "checkpoints" / "best-lm.pt", weights_only=True)
    assert state["data"]["chars"] == lm["data"]["chars"] and "宝马" in state["data"]["entities"]
    # the tagger's embedding is the LM's, frozen
    assert torch.equal(state["net"]["model.embedding.weight"], lm["net"]["model.embedding.weight"])


def test_predict_writes_label_csv_rows(workdir, trained, tmp_path):
    source = tmp_path / "new.csv"
    source.write_bytes("SentenceId\tContent\r\nN1\t听说宝马很好，奥迪太差，。\r\nN2\t其实我觉得，。\r\n".encode())
    out = tmp_path / "pred.csv"
    cli(workdir, "mode=predict", f"ckpt={trained}", f"input={source}", f"output={out}")
    assert out.read_bytes().decode() == "SentenceId\tView\tOpinion\r\nN1\t宝马\tpos\r\nN1\t奥迪\tneg\r\n"
    proc = cli(workdir, "mode=predict", f"ckpt={trained}", "input=-", "output=-", input_text="朋友说丰田发布了。\n")
    assert proc.stdout.endswith("SentenceId\tView\tOpinion\n1\t丰田\tneu\n")  # (read in text mode: CRLF as LF)


def test_json_lines_train_through_the_same_pipeline_with_a_self_training_round(workdir, corpus):
    rng = random.Random(5)
    (corpus / "more.txt").write_text("".join(toy_sentence(rng)[0] + "\n" for _ in range(60)), encoding="utf-8")
    cli(workdir, "task=aspect_sentiment", "dataset=absa_jsonl", f"dataset.train={corpus / 'train.jsonl'}", *TINY,
        "experiment=aspect_sentiment_self_training", f"dataset.unlabelled={corpus / 'more.txt'}",
        "stages.self_train.trainer.max_epochs=2")
    run = latest_run(workdir, "aspect_sentiment")
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["test/f1"] > 0.85, results
    pseudo = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["data"]["pseudo"]
    assert pseudo["split"] == "unlabelled" and 10 < len(pseudo["indices"]) <= 60
    assert all(0 <= a < b and t in (1, 2, 3) for spans in pseudo["labels"] for a, b, t in spans)


def test_bad_input_through_the_cli_is_one_line(workdir, tmp_path):
    (tmp_path / "Train.csv").write_bytes("SentenceId\tContent\r\nS1\t宝马好\r\n".encode())
    (tmp_path / "Label.csv").write_bytes("SentenceId\tView\tOpinion\r\nS1\t宝马\tpositive\r\nS2\t奥迪\tneu\r\n".encode())
    proc = cli(workdir, "task=aspect_sentiment", f"dataset.root={tmp_path}", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error:") and "Label.csv line 3: SentenceId S2" in lines[-1]


def test_the_semeval_2014_conversion_in_docs_gives_json_lines_the_reader_accepts(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    (tmp_path / "r.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<sentences>\n'
        '<sentence id="3121"><text>But the staff was so horrible to us.</text><aspectTerms>'
        '<aspectTerm term="staff" polarity="negative" from="8" to="13"/></aspectTerms></sentence>\n'
        '<sentence id="7"><text>Food fine, service mixed.</text><aspectTerms>'
        '<aspectTerm term="Food" polarity="positive" from="0" to="4"/>'
        '<aspectTerm term="service" polarity="conflict" from="11" to="18"/></aspectTerms></sentence>\n'
        '<sentence id="8"><text>Nothing here.</text></sentence>\n</sentences>\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "absa_semeval2014_to_jsonl.py"), str(tmp_path / "r.xml")],
                          capture_output=True, text=True, check=True)
    (tmp_path / "r.jsonl").write_text(proc.stdout, encoding="utf-8")
    sentences = read_jsonl(tmp_path / "r.jsonl")
    assert [(s.id, [(a.term, a.polarity, a.start) for a in s.aspects]) for s in sentences] == [
        ("3121", [("staff", "neg", 8)]), ("7", [("Food", "pos", 0)]), ("8", [])]
    assert "1 dropped" in proc.stderr


def test_a_batch_without_views_gives_every_span_parameter_a_gradient():
    """Under DDP a parameter without a gradient on one rank is an error: the no-View loss must still reach them."""
    span = SpanPolarity(input_dim=2)
    states = torch.randn(1, 4, 2, requires_grad=True)
    loss = span.loss(states, torch.zeros(1, 4, dtype=torch.long), torch.tensor([4]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and all(p.grad is not None for p in span.parameters())
