"""corsproxy: a CORS reverse proxy for APIs you cannot change."""

__version__ = "0.1.0"
