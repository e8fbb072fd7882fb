"""The vision tasks end to end through the CLI, on tiny fixtures written here in the real formats:
fashion_mnist (ours and the faithful MobileNet), the dropout_study sweep and its report, dog_finetune's three stages
with a random-init state_dict through weights_path; eval and predict modes; bad input as one line."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, cli, latest_run
from vision_fixtures import idx_bytes, write_fashion, write_image_folder

TINY_TRAINER = ["trainer.max_epochs=1", "trainer.log_every_n_steps=2", "trainer.progress=false"]
TINY_FASHION = ["dataset.val_size=100", "dataset.batch_size=50", "dataset.eval_batch_size=100",
                "model.stem=4", "model.widths=[8,8,8]", *TINY_TRAINER]
TINY_DOG = ["model.arch=resnet18", "model.pretrained=false", "dataset.image_size=32", "dataset.classes=3",
            "dataset.per_class=2", "dataset.eval_batch_size=16", "trainer.progress=false",
            "stages.frozen.trainer.max_epochs=1", "stages.unfrozen.trainer.max_epochs=1",
            "stages.light.trainer.max_epochs=1"]


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def fashion_dir(workdir):
    return write_fashion(workdir / "data" / "fashion-mnist", n_train=400, n_test=100)


@pytest.fixture(scope="module")
def fashion_run(workdir, fashion_dir):
    cli(workdir, "task=fashion_mnist", *TINY_FASHION)
    return latest_run(workdir, "fashion_mnist")


def test_fashion_mnist_trains_and_saves_the_confusion_matrix(fashion_run):
    results = json.loads((fashion_run / "results.json").read_text())
    assert results["status"] == "ok" and results["monitor"] == "val/acc"
    test = results["test"]
    assert 0 <= test["test/acc"] <= 1 and "test/acc_t_shirt_top" in test and "test/macro_f1" in test
    rows = list(csv.reader(open(fashion_run / "confusion_test.csv")))
    assert rows[0][1:] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                           "Ankle boot"]
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 100  # every test image counted once
    assert (fashion_run / "confusion_test.png").is_file() and (fashion_run / "checkpoints" / "best.pt").is_file()


def test_limit_test_batches_caps_the_final_test(workdir, fashion_dir):
    """debug=limit sets it too: a quick check must not score the whole test split (10,000 images x 6 views)."""
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "dataset.eval_batch_size=30", "trainer.limit_test_batches=2")
    rows = list(csv.reader(open(latest_run(workdir, "fashion_mnist") / "confusion_test.csv")))
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 60  # 2 batches of 30 of the 100 test images


def _test_result(run, key: str = "test/loss") -> float:
    return json.loads((run / "results.json").read_text())["test"][key]


def test_fashion_eval_and_predict_modes(workdir, fashion_run, fashion_dir, tmp_path):
    # the task tests on six views (trainer.test_model={tta_shift:1}); validation, as saved in best.pt, runs on two
    assert "test: model.tta_shift=1 (trainer.test_model)" in (fashion_run / "run.log").read_text()
    proc = cli(workdir, "task=fashion_mnist", *TINY_FASHION, "mode=eval", f"ckpt={fashion_run}/checkpoints/best.pt",
               "model.tta_shift=1")
    assert "model.tta_shift=1 over the checkpoint's model config" in proc.stdout + proc.stderr
    shifted = _test_result(latest_run(workdir, "fashion_mnist/eval"))
    assert shifted == pytest.approx(_test_result(fashion_run))  # reproduces the run's own test
    assert _test_result(latest_run(workdir, "fashion_mnist/eval"), "test/acc") == \
        pytest.approx(_test_result(fashion_run, "test/acc"))
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "mode=eval", f"ckpt={fashion_run}")
    assert _test_result(latest_run(workdir, "fashion_mnist/eval")) != pytest.approx(shifted)  # as saved: two views
    # the override applies also onto a checkpoint whose saved config predates the option
    state = torch.load(fashion_run / "checkpoints" / "best.pt", weights_only=False)
    assert "tta_shift: 0" in state["config"]
    state["config"] = state["config"].replace("tta_shift: 0", "")
    older = tmp_path / "older.pt"
    torch.save(state, older)
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "mode=eval", f"ckpt={older}", "model.tta_shift=1")
    assert _test_result(latest_run(workdir, "fashion_mnist/eval")) == pytest.approx(shifted)
    out = tmp_path / "pred.tsv"
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "mode=predict", f"ckpt={fashion_run}",
        f"input={fashion_dir / 't10k-images-idx3-ubyte.gz'}", f"output={out}",
        "paths.data_dir=/nonexistent")  # predicting needs the checkpoint, not the training data
    lines = out.read_text().splitlines()
    assert len(lines) == 100 and lines[0].split("\t")[0].endswith("t10k-images-idx3-ubyte.gz:0")
    assert all(line.split("\t")[1] in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                       "Sneaker", "Bag", "Ankle boot") for line in lines)


def test_test_model_null_tests_the_model_as_validated(workdir, fashion_dir):
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "trainer.test_model=null")
    run = latest_run(workdir, "fashion_mnist")
    assert "trainer.test_model" not in (run / "run.log").read_text()
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "mode=eval", f"ckpt={run}")
    assert _test_result(run) == pytest.approx(_test_result(latest_run(workdir, "fashion_mnist/eval")))


def test_test_model_typo_fails_before_training(workdir, fashion_dir):
    # a key the model config lacks fails before training ...
    proc = cli(workdir, "task=fashion_mnist", *TINY_FASHION, "+trainer.test_model.tta_shfit=1", check=False)
    line = _error_line(proc)
    assert "trainer.test_model: 'tta_shfit' is not a key of the final stage's model config" in line
    assert "tta_shift" in line
    assert "epoch 1" not in proc.stdout + proc.stderr
    # ... a bad value fails after training, which keeps best.pt and says how to test it
    proc = cli(workdir, "task=fashion_mnist", *TINY_FASHION, "trainer.test_model={tta_shift:-1}", check=False)
    line = _error_line(proc)
    assert "trainer.test_model (model.tta_shift=-1)" in line and "tta_shift=-1 must be 0" in line
    assert "best.pt is kept" in line and (latest_run(workdir, "fashion_mnist") / "checkpoints" / "best.pt").is_file()
    # ... and a key the task's test_model lacks is a config error that lists the keys it has
    proc = cli(workdir, "task=fashion_mnist", *TINY_FASHION, "trainer.test_model={tta_shfit:1}", check=False)
    assert "unknown config key 'trainer.test_model.tta_shfit'; keys in 'trainer.test_model': tta_shift" in \
        _error_line(proc)
    assert "epoch 1" not in proc.stdout + proc.stderr


def test_fashion_faithful_mobilenet_runs(workdir, fashion_dir):
    cli(workdir, "task=fashion_mnist", "experiment=fashion_mnist_faithful", "dataset.val_size=100",
        "trainer.max_steps=2", "trainer.limit_val_batches=1", "dataset.eval_batch_size=50", "trainer.progress=false")
    run = latest_run(workdir, "fashion_mnist")
    config = (run / "config.yaml").read_text()
    assert "arch: mobilenet_v2" in config and "input_size: 56" in config and "dropout: 0.5" in config
    assert json.loads((run / "results.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("args, words", [
    (["dataset.hflip=2"], "dataset.hflip=2 is a probability: give a value in [0, 1]"),
    (["dataset.pad=-1"], "dataset.pad=-1 must be a whole number of pixels >= 0"),
])
def test_fashion_bad_settings_are_one_line(workdir, fashion_dir, args, words):
    assert words in _error_line(cli(workdir, "task=fashion_mnist", *TINY_FASHION, *args, check=False))


@pytest.mark.parametrize("damage, words", [
    ("missing", "t10k-labels-idx1-ubyte[.gz] not found"),
    ("truncated", "is truncated or corrupt"),
])
def test_fashion_bad_files_are_one_line(workdir, tmp_path, damage, words):
    folder = write_fashion(tmp_path / "fm", n_train=50, n_test=20)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(gzip.compress(idx_bytes(torch.zeros(20, dtype=torch.uint8).numpy())[:-5]))
    proc = cli(workdir, "task=fashion_mnist", *TINY_FASHION, f"dataset.root={folder}", check=False)
    assert words in _error_line(proc)


def test_dropout_study_sweep_writes_the_report(workdir, fashion_dir):
    proc = cli(workdir, "-m", "task=dropout_study", "model.p=0.0,0.5", "model.hidden=[32]", "dataset.train_size=200",
               "dataset.train_eval_size=200", "dataset.val_size=100", "dataset.batch_size=50", *TINY_TRAINER)
    sweep = sorted((workdir / "outputs" / "multirun").iterdir())[-1]
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert [(r["model.p"], r["model.noise_shape"]) for r in rows] == [("0.0", "null"), ("0.5", "null"),
                                                                      ("0.0", "[1,null]"), ("0.5", "[1,null]")]
    for r in rows:
        gap = float(r["train_eval/acc"]) - float(r["val/acc"])
        assert abs(float(r["gap (train_eval/acc - val/acc)"]) - gap) < 1e-9
    assert (sweep / "report.png").is_file() and "| model.p |" in (sweep / "report.md").read_text()
    assert "sweep report:" in proc.stdout + proc.stderr
    (sweep / "report.csv").unlink()
    again = subprocess.run([sys.executable, "-m", "trainer.sweep_report", str(sweep)], cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 0 and (sweep / "report.csv").is_file() and "train_eval/acc" in again.stdout
    bad = subprocess.run([sys.executable, "-m", "trainer.sweep_report", str(sweep), "--param", "nope"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: 'nope' is not an override")


# ---- dog_finetune -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dog_setup(workdir):
    import torchvision

    root = write_image_folder(workdir / "data" / "dogs", per_class=4, splits=("train", "validation", "test"))
    weights = workdir / "resnet18_random.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), weights)
    return root, weights


def test_dog_finetune_three_stages_from_weights_path(workdir, dog_setup):
    root, weights = dog_setup
    # (the final test with an inference-time model option: the net is rebuilt, the head with its alpha kept)
    cli(workdir, "task=dog_finetune", *TINY_DOG, f"dataset.root={root}", f"model.weights_path={weights}",
        "trainer.test_model={dropout:0.5}")
    run = latest_run(workdir, "dog_finetune")
    assert "test: model.dropout=0.5 (trainer.test_model)" in (run / "run.log").read_text()
    ckpts = run / "checkpoints"
    assert all((ckpts / f).is_file() for f in ("best-frozen.pt", "best-unfrozen.pt", "best.pt", "last.pt"))
    source = torch.load(weights, weights_only=True)
    frozen = torch.load(ckpts / "best-frozen.pt", weights_only=True)["net"]
    final = torch.load(ckpts / "best.pt", weights_only=True)["net"]
    # stage 1 trains the head only; stages 2-3 also layer4; conv1 is never trained
    assert torch.equal(frozen["model.backbone.layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert not torch.equal(final["model.backbone.layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert torch.equal(final["model.backbone.conv1.weight"], source["conv1.weight"])
    assert not torch.equal(frozen["model.glu.value.weight"], final["model.glu.value.weight"])
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["test/alpha"] == pytest.approx(float(final["head.alpha"]))  # test uses the stored alpha
    assert results["test_model"] == {"dropout": 0.5}
    assert "test/acc_main" in results["test"] and "test/acc_aux" in results["test"]
    assert (run / "confusion_test.csv").read_text().startswith("true \\ predicted,beagle,husky,poodle")
    assert "SGD" in (run / "config.unfrozen.yaml").read_text() and "heavy" in (run / "config.unfrozen.yaml").read_text()

    out = workdir / "dog_predictions.tsv"
    cli(workdir, "task=dog_finetune", *TINY_DOG, "dataset.root=/nonexistent", "mode=predict",
        f"ckpt={ckpts / 'best.pt'}", f"input={root / 'test' / 'husky'}", f"output={out}")  # class names: checkpoint
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all(line.split("\t")[1] in ("beagle", "husky", "poodle") for line in lines)

    # A checkpoint trained from ImageNet weights (pretrained=true), read offline: torchvision would fetch the weights
    # to build the model before the checkpoint's own replace them. The error says what to do; the hint works.
    state = torch.load(ckpts / "best.pt", weights_only=False)
    saved = OmegaConf.create(state["config"])
    saved.model.pretrained, saved.model.weights_path = True, None
    state["config"] = OmegaConf.to_yaml(saved)
    torch.save(state, workdir / "imagenet_init.pt")
    offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "TORCH_HOME": str(workdir / "empty_torch_home")}
    args = ["task=dog_finetune", "mode=predict", f"ckpt={workdir / 'imagenet_init.pt'}",
            f"input={root / 'test' / 'husky'}", "output=-"]
    proc = cli(workdir, *args, env=offline, check=False)
    assert proc.returncode == 2 and "cannot fetch ImageNet weights for resnet18" in _error_line(proc), proc.stderr
    assert "for mode=predict, model.pretrained=false also works" in _error_line(proc)
    assert cli(workdir, *args, "model.pretrained=false", env=offline).stdout.count("\t") == 4


@pytest.mark.parametrize("damage, words", [
    ("missing", "image folder not found"),
    ("corrupt", "cannot decode image"),
    ("empty", "has no images"),
    ("weights", "does not fit resnet18"),
    ("one class", "a classifier needs at least two class folders"),
])
def test_dog_bad_input_is_one_line(workdir, dog_setup, tmp_path, damage, words):
    _, weights = dog_setup
    root = write_image_folder(tmp_path / "dogs", per_class=2)
    extra = []
    if damage == "missing":
        root = tmp_path / "nowhere"
    elif damage == "corrupt":
        (root / "beagle" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    elif damage == "empty":
        (root / "dachshund").mkdir()
    elif damage == "one class":
        for other in ("husky", "poodle"):
            shutil.rmtree(root / other)
    else:
        state = torch.load(weights, weights_only=True)
        state.pop("fc.weight")
        torch.save(state, tmp_path / "partial.pt")
        extra = [f"model.weights_path={tmp_path / 'partial.pt'}"]
    proc = cli(workdir, "task=dog_finetune", *TINY_DOG, f"dataset.root={root}", *extra, check=False)
    assert words in _error_line(proc)
