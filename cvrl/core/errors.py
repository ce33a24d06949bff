"""Errors that reach the user as one line (`cvrl: error: ...`, exit 2), importable from
anywhere in cvrl without pulling in the command line (`cvrl.main` re-exports them)."""


class ConfigError(ValueError):
  """A config (or its data) that cannot run; its message is one line for the user."""
