"""Rendering of sensitivity reports (HTML, markdown, JSON, matplotlib figures); no compression math here."""
from .render import build, write_report

__all__ = ["build", "write_report"]
