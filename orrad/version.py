"""The package version, in a module of its own so any layer can name it without importing
the package's public API (``orrad/__init__.py`` pulls in channels and the runtime)."""

__version__ = "0.1.0"
