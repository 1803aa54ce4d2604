"""Report stage: render the report document; never computes a statistic."""
from __future__ import annotations

from typing import Any, Callable

FORMATS = ("rich", "json", "markdown", "github", "junit", "sarif")


def render(doc: dict[str, Any], fmt: str) -> str:
    """Render `doc` in a text format (every format except `rich`, which prints to a console)."""
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {}
    from . import github, json_report, junit, markdown, sarif
    renderers.update(json=json_report.render, markdown=markdown.render, github=github.render,
                     junit=junit.render, sarif=sarif.render)
    return renderers[fmt](doc)
