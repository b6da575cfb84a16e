"""The predictor's input error: what every decoder and the predictor raise for input the model cannot use.

Callers turn it into their own answer (the endpoint: a 4xx JSON error naming the file; the CLI: one line).
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """A request or file the model cannot use; `file` names the offending input."""

    def __init__(self, file: str, problem: str) -> None:
        self.file = file
        self.problem = problem
        super().__init__(f"{file}: {problem}")
