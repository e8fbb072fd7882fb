"""Vision data and heads at unit scale: IDX reading, batch augmentations, the class-balanced plan, image-folder
layouts and their errors, the classification and center-loss heads, torchvision backbones and weights_path."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from trainer.datasets import image_augment as aug
from trainer.datasets.base import ClassBalancedBatches, per_sample_uniform
from trainer.datasets.fashion_mnist import FashionMNISTData, read_idx
from trainer.datasets.image_folder import ImageFolderData, stratified_split
from trainer.models.heads.center_loss import CenterLossClassificationHead
from trainer.models.heads.classification import ClassificationHead
from trainer.errors import UserError
from vision_fixtures import idx_bytes, write_fashion, write_image_folder, write_list_layout


# ---- IDX ------------------------------------------------------------------------------------------------------
def test_idx_round_trip_gzipped_and_raw(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array) and np.array_equal(read_idx(tmp_path / "b.gz"), array)


@pytest.mark.parametrize("content, words", [
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x01" * 7, "truncated or corrupt"),
    (b"\x1f\x8b\x08\x00garbage", "cannot read"),
    (b"PK\x03\x04whatever", "not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", "header is cut short"),
])
def test_corrupt_idx_is_one_line(tmp_path, content, words):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(UserError, match=words) as e:
        read_idx(tmp_path / "f")
    assert "\n" not in str(e.value)


def test_fashion_reads_torchvision_layout_and_carves_a_fixed_validation(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=200, n_test=50, gz=False)
    data = FashionMNISTData(root=str(tmp_path), val_size=40, train_size=100, train_eval_size=30, batch_size=16)
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 100, "val": 40, "train_eval": 30, "test": 50}
    other = FashionMNISTData(root=str(tmp_path), val_size=40, seed=123)  # another run seed: same validation images
    other.setup()
    assert np.array_equal(data.splits["val"].arrays["x"], other.splits["val"].arrays["x"])
    batch = data.splits["train"].__getitems__([0, 1, 2])
    assert batch["x"].shape == (3, 1, 28, 28) and batch["x"].dtype == torch.float32


def test_fashion_augmentation_is_per_sample_and_epoch_seeded(tmp_path):
    write_fashion(tmp_path, n_train=120, n_test=20)
    data = FashionMNISTData(root=str(tmp_path), val_size=20, erase=0.5, batch_size=8)
    data.setup()
    train = data.splits["train"]
    a = train.__getitems__([5, 9, 11])["x"]
    b = train.__getitems__([11, 5, 40, 9])["x"]  # the same samples in another batch
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[3]) and torch.equal(a[2], b[0])
    train.set_epoch(1)
    c = train.__getitems__(list(range(40)))["x"]
    train.set_epoch(0)
    d = train.__getitems__(list(range(40)))["x"]
    assert not torch.equal(c, d)  # a new epoch, new augmentations


def test_fashion_download_uses_torchvision_into_its_layout(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:  # stands in for the network: writes the files where torchvision would
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=60, n_test=20)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    data = FashionMNISTData(root=str(tmp_path), download=True, val_size=10)
    data.setup()
    assert calls and all(c[2] for c in calls) and len(data.splits["test"]) == 20


def test_missing_fashion_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*not found") as e:
        FashionMNISTData(root=str(tmp_path)).setup()
    assert "dataset.download=true" in str(e.value)


def test_idx_images_of_another_size_are_one_line(tmp_path):
    """MNIST-like IDX files at 32x32 (a padded variant) would train a 28x28 model on cropped or mis-shaped input."""
    folder = write_fashion(tmp_path, n_train=30, n_test=10)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((10, 32, 32), np.uint8))))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.gz holds 32x32 images; Fashion-MNIST's are 28x28"):
        FashionMNISTData(root=str(folder), val_size=5).setup()


# ---- augmentations --------------------------------------------------------------------------------------------
def test_hflip_and_pad_crop():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = aug.hflip(x, np.array([[0.1], [0.9]]), p=0.5)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    centred = aug.pad_crop(x, np.array([[0.5, 0.5], [0.5, 0.5]]), pad=1)  # offset 1 of 0..2: no shift
    assert torch.equal(centred, x)
    shifted = aug.pad_crop(x, np.array([[0.0, 0.0], [0.99, 0.99]]), pad=1)
    assert torch.equal(shifted[0, 0, 1:, 1:], x[0, 0, :-1, :-1]) and shifted[0, 0, 0].eq(0).all()
    assert torch.equal(shifted[1, 0, :-1, :-1], x[1, 0, 1:, 1:])


def test_erase_and_quadrant_mask_areas():
    x = torch.ones(64, 1, 20, 20)
    u = per_sample_uniform(0, 0, np.arange(64), 5)
    erased = aug.erase(x, u, p=1.0, scale=(0.1, 0.2), value=0.0)
    share = (erased == 0).float().mean(dim=(1, 2, 3))
    assert (share > 0.05).all() and (share < 0.25).all()
    masked = aug.quadrant_mask(x, per_sample_uniform(0, 0, np.arange(64), 2), p=1.0)
    assert torch.allclose((masked == 0).float().mean(dim=(1, 2, 3)), torch.full((64,), 0.25))
    assert torch.equal(aug.quadrant_mask(x, np.zeros((64, 2)) + 0.99, p=0.5), x)  # never below p


def test_affine_identity_and_mirror():
    x = torch.rand(3, 3, 8, 8)
    u = np.full((3, 6), 0.5)  # no rotation, zoom 1, no shift
    assert torch.allclose(aug.affine(x, u), x, atol=1e-5)
    u[:, 4] = 0.0
    assert torch.allclose(aug.affine(x, u, flip_p=1.0), x.flip(-1), atol=1e-5)


# ---- batch plans and splits -----------------------------------------------------------------------------------
def test_class_balanced_batches():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 10 + [3] * 2)
    plan = ClassBalancedBatches(labels, classes=3, per_class=2, seed=5)
    batches = plan.batches(0)
    assert batches == ClassBalancedBatches(labels, classes=3, per_class=2, seed=5).batches(0)
    assert batches != plan.batches(1)
    assert len(batches) == int(np.ceil(len(labels) / 6))
    for b in batches:
        classes = labels[b]
        assert len(b) == 6 and len(set(classes)) == 3 and all((classes == c).sum() == 2 for c in set(classes))
    pairs = ClassBalancedBatches(labels, classes=2, per_class=2, seed=5)
    drawn = np.bincount(labels[np.concatenate([b for e in range(10) for b in pairs.batches(e)])], minlength=4)
    assert drawn[0] > drawn[1] > drawn[2] > drawn[3]  # classes drawn by size
    few = ClassBalancedBatches([0, 0, 0, 1, 1], classes=16, per_class=2)
    assert few.batch_size == 4 and all(sorted(labels_) == [0, 0, 1, 1]
                                       for labels_ in ([[0, 0, 0, 1, 1][i] for i in b] for b in few.batches(0)))


def test_stratified_split_holds_out_a_share_of_each_class():
    labels = [0] * 50 + [1] * 20 + [2] * 3
    kept, held = stratified_split(labels, 0.1, seed=0)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(73))
    assert np.bincount(np.asarray(labels)[held]).tolist() == [5, 2, 1]
    assert np.array_equal(held, stratified_split(labels, 0.1, seed=0)[1])


# ---- image folders ----------------------------------------------------------------------------------------------
def test_image_folder_layouts(tmp_path):
    flat = ImageFolderData(root=str(write_image_folder(tmp_path / "flat", per_class=10)), image_size=32,
                           val_fraction=0.2, test_fraction=0.1, classes=2, per_class=3)
    flat.setup()
    assert flat.class_names == ["beagle", "husky", "poodle"] and flat.batch_size == 6
    assert {k: len(v) for k, v in flat.splits.items()} == {"train": 21, "val": 6, "test": 3}
    split = ImageFolderData(root=str(write_image_folder(tmp_path / "split", per_class=4,
                                                        splits=("train", "validation", "test"))), image_size=32)
    split.setup()
    assert {k: len(v) for k, v in split.splits.items()} == {"train": 12, "val": 12, "test": 12}
    listed = ImageFolderData(root=str(write_list_layout(tmp_path / "list")), list_file=str(tmp_path / "list/train.txt"),
                             image_size=32, val_fraction=0.25)
    listed.setup()
    assert listed.class_names == ["3", "7", "12"] and set(listed.splits["train"].labels.tolist()) == {0, 1, 2}
    batch = listed.splits["train"].__getitems__([0, 1])
    assert batch["x"].shape == (2, 3, 32, 32) and batch["y"].tolist() == [0, 0]


def test_a_checkpoint_trained_on_other_classes_is_one_line(tmp_path):
    data = ImageFolderData(root=str(write_image_folder(tmp_path / "imgs", per_class=2)), image_size=32)
    data.load_state_dict({"class_names": ["beagle", "husky"]})  # the folder also has poodle: ids would shift
    with pytest.raises(UserError, match="checkpoint was trained on beagle, husky"):
        data.setup()


def test_heavy_augmentation_joins_same_class_and_is_seeded(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=6)
    data = ImageFolderData(root=str(root), image_size=32, val_fraction=0.0, augment="heavy",
                           heavy={"degrees": 10, "zoom": [0.8, 1.2], "translate": 0.1, "hflip": 0.5,
                                  "quadrant_mask": 0.5, "join_same_class": 1.0})
    data.setup()
    train = data.splits["train"]
    a = train.__getitems__([0, 7, 13])
    b = train.__getitems__([13, 0])
    assert torch.allclose(a["x"][0], b["x"][1]) and torch.allclose(a["x"][2], b["x"][0])
    assert a["x"].shape == (3, 3, 32, 32) and torch.isfinite(a["x"]).all()


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "nowhere", "image folder not found"),
    (lambda p: (write_image_folder(p / "d", per_class=2), (p / "d" / "empty").mkdir())[0], "has no images"),
    (lambda p: (write_image_folder(p / "d", per_class=2),
                (p / "d" / "husky" / "broken.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg"))[0], "cannot decode image"),
    (lambda p: (p / "d").mkdir() or p / "d", "has no class folders"),
])
def test_image_folder_errors_are_one_line(tmp_path, make, words):
    root = make(tmp_path)
    with pytest.raises(UserError, match=words) as e:
        ImageFolderData(root=str(root), image_size=32).setup()
    assert "\n" not in str(e.value)


def test_bad_list_line(tmp_path):
    root = write_list_layout(tmp_path / "l")
    (root / "bad.txt").write_text("images/c3_0.jpg three\n")
    with pytest.raises(UserError, match="expected 'relative/path.jpg class_id'"):
        ImageFolderData(root=str(root), list_file=str(root / "bad.txt")).setup()


# ---- heads ----------------------------------------------------------------------------------------------------
def no_collective():
    raise AssertionError("on_validation_end must read head.reduced, not reduce again")


def test_classification_metrics_from_the_confusion_matrix(tmp_path):
    head = ClassificationHead(3, ["a", "b", "c"], save_confusion=["test"])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 2, 0]), 3).float() * 5
    head.reset()
    head.update(logits, {"x": logits, "y": y})
    m = head.compute()
    assert m["acc"] == pytest.approx(4 / 6)
    assert (m["acc_a"], m["acc_b"], m["acc_c"]) == pytest.approx((0.5, 1.0, 0.5))
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]  # per-class 2PR/(P+R)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    absent = ClassificationHead(3).confusion_metrics(torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 0]]))
    assert absent["macro_f1"] == 1.0  # class 2 neither true nor predicted: left out, as scikit-learn does
    head.sums = no_collective  # on_validation_end runs on rank 0 only with a run dir: a reduce there would hang DDP
    head.on_validation_end("test", tmp_path)
    rows = (tmp_path / "confusion_test.csv").read_text().splitlines()
    assert rows[0] == "true \\ predicted,a,b,c" and rows[1] == "a,1,1,0" and (tmp_path / "confusion_test.png").is_file()
    assert head.decode(logits, {}) == ["a", "b", "b", "b", "c", "a"]


def test_center_loss_head_tunes_alpha_on_validation_only():
    head = CenterLossClassificationHead(2, ["x", "y"], embed_dim=4)
    y = torch.tensor([0, 1, 0, 1])
    # the auxiliary classifier is right everywhere, the main one always says class 0
    outputs = {"logits": torch.tensor([[3.0, 0.0]] * 4), "aux_logits": torch.tensor([[2.0, 0], [0, 2], [2, 0], [0, 2]]),
               "embedding": torch.zeros(4, 4)}
    loss = head.loss(outputs, {"y": y})
    assert loss.requires_grad and loss > 0
    head.reset(), setattr(head, "split", "test")
    head.update(outputs, {"x": outputs["logits"], "y": y})
    assert head.compute()["acc"] == pytest.approx(0.5) and head.compute()["alpha"] == 1.0  # the stored alpha
    head.reset(), setattr(head, "split", "val")
    head.update(outputs, {"x": outputs["logits"], "y": y})
    m = head.compute()
    assert m["acc"] == 1.0 and m["alpha"] < 0.5 and m["acc_main"] == 0.5 and m["acc_aux"] == 1.0
    head.sums = no_collective
    head.on_validation_end("val", None)
    assert float(head.alpha) == pytest.approx(m["alpha"]) and "alpha" in head.state_dict()
    assert head.decode(outputs, {}) == ["x", "y", "x", "y"]


# ---- torchvision backbones --------------------------------------------------------------------------------------
def test_weights_path_loads_and_mismatch_is_one_line(tmp_path):
    import torchvision

    from trainer.models.backbone_glu import BackboneGLUClassifier

    reference = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = BackboneGLUClassifier("mobilenet_v3_small", num_classes=3, weights_path=str(tmp_path / "w.pt"))
    assert torch.equal(model.backbone.features[0][0].weight, reference.features[0][0].weight)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 3) and out["aux_logits"].shape == (2, 3) and out["embedding"].shape == (2, 64)
    with pytest.raises(UserError, match="does not fit resnet18") as e:
        BackboneGLUClassifier("resnet18", num_classes=3, weights_path=str(tmp_path / "w.pt"))
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read model.weights_path"):
        BackboneGLUClassifier("resnet18", num_classes=3, weights_path=str(tmp_path / "junk.pt"))
    with pytest.raises(UserError, match="unknown torchvision classification model 'resnet1'"):
        BackboneGLUClassifier("resnet1", num_classes=3)
    with pytest.raises(UserError, match="no such weights"):
        BackboneGLUClassifier("resnet18", num_classes=3, pretrained="NO_SUCH_WEIGHTS")


def test_weights_that_cannot_be_fetched_say_where_torchvision_looks_for_them(monkeypatch, tmp_path):
    import urllib.error

    from trainer.models.backbone_glu import BackboneGLUClassifier
    from trainer.errors import WeightsUnavailable

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as e:
        BackboneGLUClassifier("resnet18", num_classes=3, pretrained=True)
    message = str(e.value)
    assert "\n" not in message and "cannot fetch ImageNet weights for resnet18 (URLError" in message
    assert "copy https://download.pytorch.org/models/resnet18-" in message and f"{tmp_path}/hub/checkpoints/" in message


def test_inception_loads_torchvision_weights_with_their_auxiliary_branch_then_drops_it(tmp_path):
    import torchvision

    from trainer.models.backbone_glu import BackboneGLUClassifier

    reference = torchvision.models.get_model("googlenet", weights=None, aux_logits=True, init_weights=False)
    torch.save(reference.state_dict(), tmp_path / "w.pt")  # as torchvision's ImageNet file: aux1/aux2 included
    model = BackboneGLUClassifier("googlenet", num_classes=3, weights_path=str(tmp_path / "w.pt"))
    assert model.backbone.aux1 is None and not model.backbone.aux_logits
    assert torch.equal(model.backbone.conv1.conv.weight, reference.conv1.conv.weight)
    assert model.train()(torch.randn(2, 3, 64, 64))["logits"].shape == (2, 3)


def test_faithful_mobilenet_upscales_and_repeats_grey():
    from trainer.models.torchvision_net import TorchvisionClassifier

    model = TorchvisionClassifier("mobilenet_v2", num_classes=10, input_size=56, dropout=0.5).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.net.classifier[0].p == 0.5 and model.net.classifier[-1].out_features == 10
