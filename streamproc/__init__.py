"""streamproc: stream, parse, measure, show and prepare agent reasoning-trace datasets."""

from .parse import parse_trace, parse_turn, trace_to_record
from .records import BadRow, Location, Row, RowError, Segment, ToolCall, ToolResponse, Trace, Turn, row_from_dict
from .sources import SAMPLE, iter_rows, plan, read

__all__ = [
    "BadRow", "Location", "Row", "RowError", "SAMPLE", "Segment", "ToolCall", "ToolResponse", "Trace", "Turn",
    "iter_rows", "parse_trace", "parse_turn", "plan", "read", "row_from_dict", "trace_to_record",
]
__version__ = "0.1.0"
