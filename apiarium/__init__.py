"""Apiarium: a self-hosted, OpenAI-compatible gateway to the large AI models."""

__version__ = "0.1.0"
