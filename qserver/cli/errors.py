"""The CLI's exit codes and the failures that end a command with one of them."""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_BAD_PARAMS = 1
EXIT_REFUSED = 2
EXIT_NO_ANSWER = 3
EXIT_ERROR = 4


class BadParams(click.ClickException):
    """A parameter the CLI cannot turn into a request: bad JSON, position, keyword."""

    exit_code = EXIT_BAD_PARAMS


class CliFailure(Exception):
    exit_code = EXIT_ERROR


class RequestRefused(CliFailure):
    exit_code = EXIT_REFUSED


class NoReply(CliFailure):
    exit_code = EXIT_NO_ANSWER
