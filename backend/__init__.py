"""Dreamsmith backend: score-distillation text-to-3D engine, HTTP service and CLI."""

__version__ = "0.1.0"
