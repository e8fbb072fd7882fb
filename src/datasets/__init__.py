"""Datasets of the trainer project: each module reads one real format and owns its splits and batching."""
