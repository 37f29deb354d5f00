"""Ingress dialects: each client-facing API shape translated to and from the internal chat shape."""
