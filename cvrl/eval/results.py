"""DIR/results.json: what a downstream job measured, from which checkpoint, with which config."""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from cvrl.core import paths


def _plain(x: Any) -> Any:
  """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return _plain(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_results(workdir: str, results: dict, name: str = "results.json") -> str:
  """Writes `results` as JSON under workdir (process 0 only); returns the path."""
  path = paths.join(workdir, name)
  if jax.process_index() == 0:
    paths.write_json(path, _plain(results), indent=2, sort_keys=True)
  return path


def headline(job: str, metrics: dict, keys) -> str:
  """One line with the numbers a user looks at first, printed by every job."""
  parts = [f"{k}={metrics[k]:.4f}" if isinstance(metrics.get(k), float) else f"{k}={metrics.get(k)}"
           for k in keys if k in metrics]
  line = f"{job}: " + " ".join(parts)
  if jax.process_index() == 0:
    print(line, flush=True)
  return line
