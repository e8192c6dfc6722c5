"""Telling a workflow's own console lines from its libraries' (Ray, Ray Data, Ray Train, Tune, MLflow).

A line is library output when, after Ray's ``(<task or actor> pid=N, ip=...)`` prefix of forwarded lines:

- it has a library's log format: Python ``logging`` as Ray formats it (``2026-12-04 19:17:39,719  WARNING file.py:85
  -- ...``), MLflow's (``2026/12/04 19:17:49 INFO mlflow...``), Ray's C++ (``[2026-12-04 19:18:03,945 E 6224 6256]
  core_worker.cc...``);
- it comes from the raylet or the autoscaler (``(raylet)``, ``(autoscaler ...)``);
- it is a Python warning (``...py:436: RayDeprecationWarning: ...``) or the source line echoed under one;
- it is one of the libraries' unformatted messages (``LIBRARY_MESSAGES``: Ray Train's worker-group lines, Ray Data's
  execution banners and progress notices, MLflow's registry announcements, Tune's status tables, tqdm notices).

Everything else is the workflow's (progress, step lines, the summary) or the user's own output.
"""

from __future__ import annotations

import re

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
RAY_PREFIX = re.compile(r"^\((?P<source>[^()]*?)(?: pid=\d+)?(?:, ip=[\d.]+)?\) ?")
LOG_FORMATS = (
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL) "),
    re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) "),
    re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\]"),
)
PYTHON_WARNING = re.compile(r"\.py:\d+: \w*Warning: ")
LIBRARY_MESSAGES = (
    # Ray core
    "Started a local Ray instance",
    "Connecting to existing Ray cluster",
    "Token authentication is",
    "Traceback (most recent call last)",
    # Ray Train
    "Requesting resources",
    "Attempting to start training worker group",
    "Started training worker group",
    "- (ip=",
    "Setting up process group",
    # Ray Data
    "Starting execution of Dataset",
    "Execution plan of Dataset",
    "\u2714\ufe0f",  # the check mark of "Dataset ... execution finished"
    "Progress bars",
    "Progress will be logged",
    "[dataset]",
    "tqdm",
    # MLflow
    "Successfully registered model",
    "Created version '",
    # Ray Tune
    "Trial status",
    "View detailed results here",
    "To visualize your results with TensorBoard",
    "Training started with configuration",
    "Training finished iteration",
    "Training completed after",
    "Current time:",
    "Logical resource usage",
    "╭",
    "│",
    "├",
    "╰",
)


def library_lines(output: str) -> list[str]:
    """The lines of ``output`` that a library printed (module docstring), in order."""
    found = []
    after_warning = False
    for line in ANSI_COLOUR.sub("", output).splitlines():
        match = RAY_PREFIX.match(line)
        source = match.group("source") if match else ""
        message = line[match.end() :] if match else line
        is_library = (
            source == "raylet"
            or source.startswith("autoscaler")
            or any(pattern.match(message) for pattern in LOG_FORMATS)
            or bool(PYTHON_WARNING.search(message))
            or (after_warning and message.startswith("  "))
            or any(message.lstrip().startswith(text) for text in LIBRARY_MESSAGES)
        )
        after_warning = bool(PYTHON_WARNING.search(message))
        if is_library:
            found.append(line)
    return found
