"""exprof: a command-line experiment profiler for Claude."""

__version__ = "0.1.0"
