"""Log output: lines of text for a terminal, or JSON objects for a log collector.

``posegraph --log-format json ...`` (or the environment variable ``POSEGRAPH_LOG_FORMAT``
set to ``json``, which node processes inherit) writes every log record, from the
supervisor and from every node process, as one JSON object a line on stderr::

    {"ts": "2026-12-05T11:40:02.113+00:00", "level": "warning", "process": "cam",
     "logger": "nodes.sources", "message": "source cam: cannot read ..."}

``process`` is the node process's group (``supervisor`` for the process that runs the
pipeline), so a collector (journald, Loki, Elasticsearch) can filter by node.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

ENV = "POSEGRAPH_LOG_FORMAT"
FORMATS = ("text", "json")


def wants_json() -> bool:
    return os.environ.get(ENV, "text").strip().lower() == "json"


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: int, text_format: str, process: str = "supervisor") -> None:
    """Send the log to stderr as text in ``text_format``, or as JSON when asked for."""
    handler = logging.StreamHandler(sys.stderr)
    if wants_json():
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    # does nothing where logging is set up already (a program that embeds posegraph)
    logging.basicConfig(level=level, handlers=[handler])


def error_line(message: str) -> str:
    """The one line a command ends with when it fails."""
    if wants_json():
        return json.dumps(
            {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": "error",
                "process": "supervisor",
                "logger": "posegraph",
                "message": message,
            }
        )
    return f"error: {message}"
