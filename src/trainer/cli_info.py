"""What the CLI prints without running anything: `--help`, `--version`, and `--cfg job|hydra|all --resolve`."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from .invocation import CONF_DIR, CONF_PACKAGE


def print_help() -> None:
    conf = CONF_DIR
    print("usage: python -m trainer [task=NAME] [KEY=VALUE ...]        one run\n"
          "       python -m trainer -m [task=NAME] KEY=V1,V2 ...         a sweep (Hydra multirun)\n"
          "       torchrun --nproc_per_node=N -m trainer [...]           DistributedDataParallel\n"
          "       python -m trainer resume=RUN_DIR                       resume a killed run\n"
          "       python -m trainer task=NAME mode=eval ckpt=PATH [split=test]\n"
          "       python -m trainer task=NAME mode=predict ckpt=PATH input=PATH|- [output=PATH|-]\n")
    defaults = _root_defaults()
    print("tasks (task=NAME), * the default (what `python -m trainer` alone runs):")
    for path in sorted((conf / "task").glob("*.yaml")):
        name = f"{path.stem}*" if path.stem == defaults.get("task") else path.stem
        print(f"  {name:<20} {_describe(path)}")
    print("\nconfig groups (GROUP=OPTION; * marks the default, which a task may change):")
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in ("task", "hydra")):
        options = [f"{p.stem}*" if p.stem == defaults.get(group.name) else p.stem
                   for p in sorted(group.glob("*.yaml"))]
        print(f"  {group.name:<10} {', '.join(options)}")
    print("\nany value: KEY=VALUE (optim.lr=3e-4 trainer.max_epochs=5); show the composed config: --cfg job\n"
          "(--cfg job --resolve: with every value filled in); list the runs under outputs/: python -m trainer runs;\n"
          "the version: --version; Hydra's own flags: --hydra-help")


def version_line() -> str:
    """The project's version (the installed distribution's, or pyproject.toml's in a checkout that is not
    installed), with the versions of what it runs on; imports nothing heavy."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    ours = version("stagefit")
    if ours == "not installed":
        pyproject = CONF_DIR.parent / "pyproject.toml"  # (conf/ sits beside it in a checkout)
        for line in pyproject.read_text().splitlines() if pyproject.is_file() else []:
            if line.startswith("version"):
                ours = line.split("=", 1)[1].strip().strip('"') + " (checkout)"
                break
    return (f"trainer (stagefit) {ours}; torch {version('torch')}, torchvision {version('torchvision')}, "
            f"hydra-core {version('hydra-core')}, python {sys.version.split()[0]}")


def print_resolved(flags: list[str], overrides: list[str]) -> None:
    """`--cfg job|hydra|all --resolve [--package KEY]`: the composed config with every interpolation filled in,
    except `${data_info.*}` (the DataModule's facts, known only once the data is read), which stay as written and are
    listed in a comment. Creates no run folder."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from .errors import UserError

    def value_of(*names: str) -> str | None:
        for i, flag in enumerate(flags[:-1]):
            if flag in names:
                return flags[i + 1]
        return None

    which = value_of("--cfg", "-c") or "job"
    if which not in ("job", "hydra", "all"):
        raise UserError(f"--cfg {which}: give --cfg job, --cfg hydra or --cfg all")
    os.environ.setdefault("TRAINER_RUN_STAMP", time.strftime("%Y-%m-%d_%H-%M-%S"))  # resolving makes no folder
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a run
    try:
        if which == "job":
            with open_struct_off(cfg):
                del cfg["hydra"]
        left: list[str] = []
        out = _resolved(cfg, "", left)
    finally:
        HydraConfig.instance().cfg = before
    if which == "hydra":
        out, left = {"hydra": out["hydra"]}, [k for k in left if k.startswith("hydra.")]
    package = value_of("--package", "-p")
    if package:
        out = OmegaConf.select(OmegaConf.create(out), package)
        if out is None:
            raise UserError(f"--package {package}: no such key in the config")
        out = OmegaConf.to_container(out) if OmegaConf.is_config(out) else out
        shown = OmegaConf.to_yaml(OmegaConf.select(cfg, package, throw_on_resolution_failure=False) or {},
                                  resolve=False) if OmegaConf.is_config(OmegaConf.select(
                                      cfg, package, throw_on_resolution_failure=False)) else ""
        left = [k for k in left if k.startswith(f"{package}.") or f"${{{k}}}" in shown]
    text = OmegaConf.to_yaml(out) if isinstance(out, (dict, list)) else f"{out}\n"
    if left:
        text = (f"# left as written, known only as the run starts (data_info: once the data is read; the run "
                f"folder's config.yaml has them): {', '.join(left)}\n") + text
    print(text, end="")


@contextlib.contextmanager
def open_struct_off(cfg):
    from omegaconf import OmegaConf

    OmegaConf.set_struct(cfg, False)
    try:
        yield
    finally:
        OmegaConf.set_struct(cfg, True)


def _resolved(node, path: str, left: list[str]):
    """A plain copy of `node` with each interpolation resolved where it can be, else kept as written."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, DictConfig):
        keys = list(node.keys())
        items = [(k, f"{path}.{k}" if path else str(k)) for k in keys]
    elif isinstance(node, ListConfig):
        items = [(i, f"{path}[{i}]") for i in range(len(node))]
    else:
        return node
    out: dict | list = {} if isinstance(node, DictConfig) else []
    for key, where in items:
        try:
            value = node[key]
            value = _resolved(value, where, left)
        except OmegaConfBaseException:
            value = node._get_node(key)._value()  # the text as written: ${data_info.num_classes}
            if not str(value).startswith("${data_info."):
                left.append(where)
            else:
                left.append(str(value)[2:-1])
        except Exception:  # noqa: BLE001 - a resolver that cannot run here (a missing runtime value)
            value = node._get_node(key)._value()
            left.append(where)
        if isinstance(out, dict):
            out[key] = value
        else:
            out.append(value)
    return out


def _root_defaults() -> dict[str, str]:
    """GROUP -> option chosen by conf/config.yaml's defaults list."""
    from omegaconf import OmegaConf

    entries = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    return {str(k): str(v) for e in entries if isinstance(e, dict) for k, v in e.items()}


def _describe(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ")
    return ""
