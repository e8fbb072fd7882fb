"""torchvision classification models by name, with ImageNet weights or a local state_dict, and their classifier cut.

Builds any model of `torchvision.models.list_models()` through `torchvision.models.get_model` (torchvision's own
registry), with:
  - `pretrained`: true (the arch's DEFAULT weights) or a weights name ("IMAGENET1K_V2"), fetched by torchvision's
    weights API (downloads on a machine with internet, then cached in $TORCH_HOME);
  - `weights_path`: a local state_dict of the same architecture (as `torch.save(model.state_dict(), path)` writes, or
    as torchvision's downloaded .pth files are), read with `weights_only=True`.
Problems are one-line UserErrors: an unknown arch, no internet for a download, an unreadable file, mismatching keys.

`cut_classifier` removes the ImageNet classifier so a task can put its own head on the pooled features: the
model's last child (`fc`, `classifier`, `heads`, `head` in torchvision's families) is replaced by what precedes its
first Linear layer (ConvNeXt keeps its LayerNorm and Flatten), and the Linear's input width is the feature size.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainer.errors import UserError, WeightsUnavailable

log = logging.getLogger("trainer")


def build_torchvision(arch: str, pretrained: bool | str = False, weights_path: str | None = None,
                      **kwargs) -> nn.Module:
    """A torchvision classification model with ImageNet weights (`pretrained`), a local state_dict, or neither."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise UserError(f"unknown torchvision classification model '{arch}'; choose one of: {', '.join(names)}")
    if pretrained and weights_path:
        raise UserError("give either model.pretrained or model.weights_path, not both")
    if pretrained:
        weights = "DEFAULT" if pretrained is True else str(pretrained)
        try:
            return torchvision.models.get_model(arch, weights=weights, **kwargs)
        except (KeyError, ValueError) as e:
            available = [w.name for w in torchvision.models.get_model_weights(arch)]
            raise UserError(f"model.pretrained={pretrained}: no such weights for {arch} ({e}); available: "
                            f"true, {', '.join(available)}") from None
        except Exception as e:  # no network, proxy, corrupt download
            enum = torchvision.models.get_model_weights(arch)
            url = (enum.DEFAULT if weights == "DEFAULT" else enum[weights]).url
            raise WeightsUnavailable(
                f"cannot fetch ImageNet weights for {arch} ({type(e).__name__}: {str(e)[:120]}); without internet, copy "
                f"{url} into {Path(torch.hub.get_dir()) / 'checkpoints'}/ (where torchvision looks first), or pass "
                f"model.pretrained=false model.weights_path=FILE") from None
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    if weights_path:
        load_state_dict_file(model, weights_path, arch)
    return model


def load_state_dict_file(model: nn.Module, path: str | Path, what: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.weights_path not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read model.weights_path {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                        f"; it must be a state_dict saved with torch.save") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"model.weights_path {path} does not hold a state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {', '.join(wrong[:2])})")
        raise UserError(f"model.weights_path {path} does not fit {what}: " + "; ".join(parts)
                        + "; save the state_dict of the same architecture with the ImageNet classifier")
    model.load_state_dict(state)
    log.info(f"loaded {len(state)} tensors of {what} from {path}")


def drop_auxiliary_classifiers(model: nn.Module) -> nn.Module:
    """Remove Inception v3's / GoogLeNet's auxiliary ImageNet classifiers (training-time side outputs).

    torchvision only builds these models with their ImageNet weights when the auxiliary branches exist (the weights
    hold them), so they are built whole, loaded, then cut here."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)
    return model


def cut_classifier(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace the model's classifier by what precedes its first Linear; return (model, feature size)."""
    name, last = list(model.named_children())[-1]
    if isinstance(last, nn.Linear):
        setattr(model, name, nn.Identity())
        return model, last.in_features
    if isinstance(last, nn.Sequential):
        for i, module in enumerate(last):
            if isinstance(module, nn.Linear):
                kept = [m for m in list(last)[:i] if not isinstance(m, nn.Dropout)]
                setattr(model, name, nn.Sequential(*kept) if kept else nn.Identity())
                return model, module.in_features
    raise UserError(f"cannot find the linear classifier of {type(model).__name__} (its last part is "
                    f"{type(last).__name__}); choose a model whose classifier ends in nn.Linear")


def replace_last_linear(model: nn.Module, num_classes: int, dropout: float | None = None) -> nn.Module:
    """Give the model a fresh final Linear of `num_classes` outputs; set the classifier's dropout to `dropout`."""
    parent_name, parent = list(model.named_children())[-1]
    if isinstance(parent, nn.Linear):  # ResNet-style `fc`: no dropout of its own
        layers = [nn.Linear(parent.in_features, num_classes)]
        if dropout:
            layers.insert(0, nn.Dropout(dropout))
        setattr(model, parent_name, nn.Sequential(*layers) if len(layers) > 1 else layers[0])
        return model
    linears = [i for i, m in enumerate(parent) if isinstance(m, nn.Linear)] if isinstance(parent, nn.Sequential) else []
    if not linears:
        raise UserError(f"cannot find the linear classifier of {type(model).__name__}")
    i = linears[-1]
    parent[i] = nn.Linear(parent[i].in_features, num_classes)
    if dropout is not None:
        for m in parent:
            if isinstance(m, nn.Dropout):
                m.p = dropout
    return model
