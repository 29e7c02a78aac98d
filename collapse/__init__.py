"""collapse: measure and simulate model collapse in language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``collapse.load_runs`` without importing pandas at ``import collapse`` (start-up stays fast)."""
    if name == "load_runs":
        from collapse.results import load_runs

        return load_runs
    raise AttributeError(f"module 'collapse' has no attribute {name!r}")
