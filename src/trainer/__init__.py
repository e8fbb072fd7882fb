"""trainer: one generic training loop; Hydra composes a dataset, a model and a task head into a task."""

__version__ = "0.1.0"
