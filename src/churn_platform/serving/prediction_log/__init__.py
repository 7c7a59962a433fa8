"""The prediction log: requests hand rows to a bounded in-memory buffer; one background thread COPYs them in batches.

- `rows`: a row's columns, its UUIDv7 request id, and its form as COPY text (formatted in bulk on the request path);
- `buffer`: the bounded buffer of those lines, drop accounting, and waiting for a flush;
- `writer`: the thread that writes the buffer's batches, confirms lost commits (`pg_xact_status`) and backs off.
"""

from churn_platform.serving.prediction_log.buffer import PredictionLogBuffer
from churn_platform.serving.prediction_log.rows import (
    COLUMNS,
    NULL,
    PredictionRecord,
    RouteFields,
    Shadow,
    copy_lines,
    copy_text,
    new_request_id,
)
from churn_platform.serving.prediction_log.writer import COPY_SQL, PredictionLogWriter

__all__ = [
    "COLUMNS",
    "COPY_SQL",
    "NULL",
    "PredictionLogBuffer",
    "PredictionLogWriter",
    "PredictionRecord",
    "RouteFields",
    "Shadow",
    "copy_lines",
    "copy_text",
    "new_request_id",
]
