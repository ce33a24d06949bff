"""The jobs `python -m cvrl.main` runs, one module each: config.job names the module."""
