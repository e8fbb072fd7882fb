"""The Hydra config tree, shipped as package data and read through Hydra's package path (pkg://trainer.conf)."""
