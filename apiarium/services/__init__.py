"""The domain services, free of Tornado: what handlers call once a request is parsed."""
