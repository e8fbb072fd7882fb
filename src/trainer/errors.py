"""Errors that a user can fix. The CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """Bad input: an unknown task, a wrong path, a corrupt file, a config typo.

    The message must say what is wrong and what to do about it, in one line.
    """


class NonFiniteLossError(UserError):
    """The training loss became NaN or inf, or diverged; the last good checkpoint (`last_good`) is kept."""

    def __init__(self, message: str, last_good: str | None = None):
        super().__init__(message)
        self.last_good = last_good


class WeightsUnavailable(UserError):
    """Pretrained weights that could not be fetched (no internet, a proxy, a corrupt download)."""


def one_line(text: str) -> str:
    """Collapse a multi-line message (Hydra's, OmegaConf's) into one readable line."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts)
