"""Shared test helpers (network proxies, ...)."""
