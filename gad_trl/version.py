"""The package version, in a module of its own so the library can read it without importing `gad_trl` itself."""

__version__ = "0.1.0"
