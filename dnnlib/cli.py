"""Helpers of the command-line tools: expected errors reported as one line, option parsers."""

import functools
import os
import pickle
import re
import zipfile

import click

from dnnlib.util import one_line

#----------------------------------------------------------------------------
# One-line errors for the command-line tools.

# What a CLI reports as one line instead of a traceback: bad values (ValueError, which includes
# torch_utils.checkpoint.CheckpointError and OutdirError), file-system problems (OSError, which
# includes DiskFullError), and what broken files raise while being read.
EXPECTED_ERRORS = (ValueError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError)


def cli_errors(*extra_types):
    """Decorator for a click command's function: expected errors become one-line `click.ClickException`s.

    `extra_types` adds exception classes of the caller's own (e.g. InversionError). Set the environment
    variable DNNLIB_TRACEBACK=1 to get the traceback instead (for bug reports). Usage::

        @click.command()
        @click.option(...)
        @cli_errors(InversionError)
        def main(...): ...
    """
    if len(extra_types) == 1 and callable(extra_types[0]) and not isinstance(extra_types[0], type):
        return cli_errors()(extra_types[0])                 # Used bare: @cli_errors
    caught = EXPECTED_ERRORS + tuple(extra_types)

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except click.ClickException:
                raise
            except caught as err:
                if os.environ.get('DNNLIB_TRACEBACK'):
                    raise
                raise click.ClickException(one_line(err)) from err
        return wrapper
    return decorate

#----------------------------------------------------------------------------
# Command-line helpers.

def parse_range(text):
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    if isinstance(text, (list, tuple)):
        return list(text)
    values = []
    for part in str(text).split(','):
        m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
        if m is None:
            raise ValueError(f"cannot parse '{part}' in '{text}': expected e.g. '0-3,7'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        values.extend(range(lo, hi + 1))
    return values


class BatchType(click.ParamType):
    """A batch-size option: 'auto' or a positive integer."""
    name = 'N|auto'

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == 'auto':
            return value if isinstance(value, int) else 'auto'
        try:
            n = int(value)
        except ValueError:
            self.fail(f'{value!r} is neither a positive integer nor "auto"', param, ctx)
        if n < 1:
            self.fail(f'{n} is not a positive integer', param, ctx)
        return n


def checked_by(parse):
    """A click callback that runs `parse(value)` and reports its ValueError as a bad value of the option (exit 2);
    the value itself passes through unchanged."""
    def callback(ctx, param, value):
        try:
            parse(value)
        except ValueError as err:
            raise click.BadParameter(str(err).split(': ', 1)[-1] if str(err).startswith('--') else str(err)) from err
        return value
    return callback


def given_options(ctx, options):
    """The options of `options` that the user set on the command line (not left at their defaults)."""
    return {k: v for k, v in options.items() if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
