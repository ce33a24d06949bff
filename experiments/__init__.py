"""Benchmarks and sweeps, run as `python -m experiments.<name>` under cvrl's command-line
conventions (cvrl.core.cli): the libraries' log lines off unless --verbosity is given."""
from cvrl.core import cli as _cli

_cli.quiet_native_logs()  # the package is imported before the program: before TensorFlow
