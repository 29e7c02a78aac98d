"""collapse: measure and simulate model collapse in language models."""

__version__ = "0.1.0"
