"""Datasets of the trainer project: each module reads one real format and owns its splits and batching.

This top-level name is shared with Hugging Face's `datasets`; `trainer.cli` checks that this package is the
one imported (see `IS_TRAINER_DATASETS`).
"""

IS_TRAINER_DATASETS = True
