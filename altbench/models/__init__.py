"""Architectures: one module per family, each a `LanguageModel` built from a flat config dataclass."""
