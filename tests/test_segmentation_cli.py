"""Segmentation end to end through the CLI, on a toy corpus the tests write: train, eval on an icwb2 test/gold pair,
predict (file, stdin, empty lines), the user dictionary at work, and bad input."""
from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import cli, latest_run
from trainer.models.heads.sighan_score import score_lines, scores

# Words of disjoint characters, so a tiny model can learn the segmentation. 甲 and 乙 are always one-character
# words (a model splits 甲乙), 丙丁 is always one word (a model keeps it whole): the dictionary test turns both round.
WORDS = ["甲", "乙", "丙丁", "中国", "人民", "发展", "经济", "我们", "今天", "北京", "上海", "工作", "学习", "新",
         "的", "了", "和", "在", "是", "有", "一九九八年", "世界", "和平", "科学技术", "进步", "社会", "主义", "建设"]
PUNCT = ["，", "。"]


def toy_sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words: list[str] = []
        for _ in range(rng.randint(1, 3)):
            words += [rng.choice(WORDS) for _ in range(rng.randint(2, 7))] + [rng.choice(PUNCT)]
        out.append(words)
    return out


def write_people_daily(path, sentences) -> None:
    path.write_text("".join("  ".join(f"{w}/{'w' if w in PUNCT else 'n'}" for w in s) + "\n" for s in sentences),
                    encoding="utf-8")


TINY_OURS = ["model.embedding_dim=32", "model.channels=32", "model.bigram_dim=8",
             "model.dilations=[1,2]", "model.dropout=0.1", "dataset.batch_size=32", "optim.lr=1e-2"]
TINY_TRAINER = ["trainer.max_epochs=6", "trainer.max_time=null", "trainer.progress=false",
                "trainer.log_every_n_steps=20"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    write_people_daily(root / "pd.txt", toy_sentences(400, seed=1))
    held_out = toy_sentences(30, seed=2)
    (root / "gold.utf8").write_text("".join("  ".join(s) + "\n" for s in held_out[:15]) + "\n"
                                    + "".join("  ".join(s) + "\n" for s in held_out[15:]), encoding="utf-8")
    (root / "test.utf8").write_text("".join("".join(s) + "\n" for s in held_out[:15]) + "\n"
                                    + "".join("".join(s) + "\n" for s in held_out[15:]), encoding="utf-8")
    (root / "train.utf8").write_text("".join(" ".join(s) + "\n" for s in toy_sentences(300, seed=3)),
                                     encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trained(workdir, corpus):
    """Ours (tiny) trained on the People's Daily-format toy corpus."""
    cli(workdir, "task=segmentation", f"dataset.path={corpus / 'pd.txt'}", *TINY_OURS, *TINY_TRAINER)
    return latest_run(workdir, "segmentation")


def test_training_scores_the_held_out_lines_as_sighan_does(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["monitor"] == "val/f1"
    test = results["test"]
    assert {"test/precision", "test/recall", "test/f1", "test/oov_recall", "test/iv_recall"} <= set(test)
    assert test["test/f1"] > 0.95, test
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)["data"]
    assert "丙" in state["chars"] and "丙丁" in state["train_words"]  # vocabulary and word list travel along


def test_eval_on_an_icwb2_test_and_gold_pair_equals_scoring_the_predictions(workdir, corpus, trained, tmp_path):
    ckpt = trained / "checkpoints" / "best.pt"
    files = [f"dataset.test={corpus / 'test.utf8'}", f"dataset.gold={corpus / 'gold.utf8'}"]
    cli(workdir, "task=segmentation", "dataset=icwb2", *files, "mode=eval", f"ckpt={ckpt}")
    metrics = json.loads((latest_run(workdir, "segmentation/eval") / "results.json").read_text())["test"]
    out = tmp_path / "out.utf8"
    cli(workdir, "task=segmentation", "mode=predict", f"ckpt={ckpt}", f"input={corpus / 'test.utf8'}",
        f"output={out}")
    predicted = out.read_text(encoding="utf-8").split("\n")[:-1]
    gold = (corpus / "gold.utf8").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(predicted) == len(gold) and predicted[15] == ""  # the empty line stays an empty line
    train_words = torch.load(ckpt, weights_only=True)["data"]["train_words"]
    expected = scores(score_lines(train_words, gold, predicted))
    for key in ("precision", "recall", "f1", "oov_recall", "iv_recall"):
        assert metrics[f"test/{key}"] == pytest.approx(expected[key]), key


def test_predict_reads_stdin_with_only_the_checkpoint(workdir, trained):
    proc = cli(workdir, "task=segmentation", "mode=predict", f"ckpt={trained}", "input=-", "output=-",
               "dataset.path=/nonexistent/corpus.txt", input_text="我们今天学习，\n\n科学技术进步。\n")
    assert proc.stdout.split("\n") == ["我们  今天  学习  ，", "", "科学技术  进步  。", ""]


def test_the_dictionary_keeps_a_split_word_whole_and_splits_a_whole_one(workdir, trained, tmp_path):
    text = "甲乙丙丁\n"
    plain = cli(workdir, "task=segmentation", "mode=predict", f"ckpt={trained}", "input=-", "output=-",
                input_text=text)
    assert plain.stdout == "甲  乙  丙丁\n"  # what the model does on its own
    user = tmp_path / "user_dict.txt"
    user.write_text("# keep 甲乙 whole, split 丙丁\n甲乙,1e6\n丙丁,1e-6\n", encoding="utf-8")
    with_dict = cli(workdir, "task=segmentation", "mode=predict", f"ckpt={trained}", "input=-", "output=-",
                    f"dict={user}", input_text=text)
    assert with_dict.stdout == "甲乙  丙  丁\n"


def test_faithful_fcn_trains_on_icwb2_files(workdir, corpus):
    files = [f"dataset.train={corpus / 'train.utf8'}", f"dataset.test={corpus / 'test.utf8'}",
             f"dataset.gold={corpus / 'gold.utf8'}"]
    cli(workdir, "task=segmentation", "experiment=segmentation_faithful", "dataset=icwb2", *files,
        "dataset.batch_size=32", "trainer.max_epochs=2", "trainer.max_time=null", "trainer.progress=false")
    run = latest_run(workdir, "segmentation")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and 0 <= results["test"]["test/f1"] <= 1
    assert "SegFCN" in (run / "run.log").read_text()
    assert "bigram_keys" not in torch.load(run / "checkpoints" / "best.pt", weights_only=True)["data"]


# ---- bad input: one clear line, exit code 2 ----------------------------------------------------------------------
def test_a_gbk_corpus_is_one_line(workdir, tmp_path):
    bad = tmp_path / "gbk.utf8"
    bad.write_bytes("中国  人民\n".encode("gbk"))
    proc = cli(workdir, "task=segmentation", "dataset=icwb2", f"dataset.train={bad}", *TINY_TRAINER, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {bad} is not UTF-8 (byte 0xd6 on line 1)" in proc.stderr


def test_a_malformed_dictionary_line_is_one_line(workdir, trained, tmp_path):
    user = tmp_path / "bad_dict.txt"
    user.write_text("甲乙,2\n丙丁 0.5\n", encoding="utf-8")
    proc = cli(workdir, "task=segmentation", "mode=predict", f"ckpt={trained}", "input=-", "output=-",
               f"dict={user}", input_text="甲乙\n", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"line 2: '丙丁 0.5' is not word,multiplier" in proc.stderr


def test_test_and_gold_that_differ_are_one_line(workdir, corpus, trained, tmp_path):
    gold = tmp_path / "gold.utf8"
    gold.write_text("中国  人民\n", encoding="utf-8")
    test = tmp_path / "test.utf8"
    test.write_text("中国人\n", encoding="utf-8")
    proc = cli(workdir, "task=segmentation", "dataset=icwb2", f"dataset.test={test}", f"dataset.gold={gold}",
               "mode=eval", f"ckpt={trained}", check=False)
    assert proc.returncode == 2 and "line 1 of the text differs from its gold segmentation" in proc.stderr
