"""The guard's logs: plain text lines, or one JSON object a line (``log_format="json"``)
with the time, level, logger, message and the structured fields of the event (a
request's endpoint, model, upstream, status, finish reason, tokens, seconds, cut kind
and position, retry, error; never a prompt or an output unless ``log_content``).

>>> import logging
>>> rec = logging.LogRecord("degen.guard", logging.INFO, "", 0, "done %s", ("x",), None)
>>> rec.request = {"status": 200}
>>> line = json.loads(JSONFormatter().format(rec))
>>> line["message"], line["request"]
('done x', {'status': 200})
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from degen.guard.config import GuardConfig

_FIELDS = ("request", "shutdown", "upstream_health")


class JSONFormatter(logging.Formatter):
    """One JSON object a line; see the module doc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(), "pid": os.getpid()}
        for k in _FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(config: GuardConfig) -> None:
    """Configure the root logger for ``degen guard`` (and quiet httpx)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if config.log_format == "json" else
                         logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(config.log_level.upper())
