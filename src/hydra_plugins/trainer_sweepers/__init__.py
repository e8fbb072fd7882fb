"""The project's sweepers as Hydra plugins (`hydra/sweeper=grid`, the default, and `hydra/sweeper=optuna`).

Hydra instantiates a sweeper only from a class defined in the `hydra_plugins` namespace package, so the classes are
declared here and their code lives in `trainer.sweeper`. Hydra imports this module on every start to find its
plugins: it imports nothing heavy (Optuna is imported by a search, when it starts).
"""
from hydra.plugins.sweeper import Sweeper

from trainer import sweeper as _impl


class GridSweeper(_impl.GridSweeper, Sweeper):
    __doc__ = _impl.GridSweeper.__doc__


class OptunaSweeper(_impl.OptunaSweeper, Sweeper):
    __doc__ = _impl.OptunaSweeper.__doc__
