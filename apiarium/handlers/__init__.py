"""Tornado request handlers: one module per group of endpoints."""
