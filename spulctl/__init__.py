"""spulctl: make a frozen LLM forget part of its training data with soft prompts (SPUL)."""

__version__ = "0.1.0"
