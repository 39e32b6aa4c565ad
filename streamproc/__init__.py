"""streamproc: stream, parse, measure, show and prepare agent reasoning-trace datasets."""

from streamproc._compiled import choose as _choose_parser

_choose_parser()  # before .parse and .turns are first imported

from streamproc.parse.parser import parse_trace, parse_turn, trace_to_record
from streamproc.records import BadRow, Location, Row, RowError, Trace, row_from_dict
from streamproc.parse.turns import Segment, ToolCall, ToolResponse, Turn
from streamproc.io.sources import SAMPLE, iter_rows, plan, read

__all__ = [
    "BadRow", "Location", "Row", "RowError", "SAMPLE", "Segment", "ToolCall", "ToolResponse", "Trace", "Turn",
    "iter_rows", "parse_trace", "parse_turn", "plan", "read", "row_from_dict", "trace_to_record",
]
__version__ = "0.1.0"
