"""The names `--preset` and `--dedup` take, apart from curate.py so that building a command's
options (and its --help) does not import DuckDB, pyarrow and the feature code."""

DEDUP_MODES = ("exact", "near")

PRESET_HELP = {
    "clean": "well-formed agent behaviour: no malformed calls, no calls to undeclared tools, no missing arguments, every call answered, ends with an answer",
    "recovered": "clean, and every failed tool response is followed by a success from the same tool",
    "strict": "clean, and no failed response, unknown argument, unpaired or malformed response, or empty <think>",
    "agentic": "clean, and at least one tool call",
    "reasoning": "at least one <think> block and none empty",
}
