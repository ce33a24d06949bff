"""Every leaf of every shipped config is settable from the command line and reads back.

Fields that default to None are typed placeholders (ml_collections cannot override a plain
None); a None section (`probe` off) is the only exception: it is switched by the config
argument (e.g. `configs/demo.py:probe=True`), not by a leaf.
"""
import glob
import os
import subprocess
import sys

import ml_collections
import pytest
from ml_collections import config_dict

from cvrl import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))
SECTIONS = {"probe"}  # None = the section is off; see the module docstring


def leaves(c, prefix=""):
  """(dotted path, value, declared type) of every leaf; the type of a placeholder is its
  FieldReference's (None for a plain None)."""
  for key in sorted(c.keys()):
    field = c._fields[key]  # pylint: disable=protected-access
    path = prefix + key
    if isinstance(field, ml_collections.ConfigDict):
      yield from leaves(field, path + ".")
    elif isinstance(field, config_dict.FieldReference):
      yield path, field.get(), field.get_type()
    else:
      yield path, field, None if field is None else type(field)


def new_value(value, kind):
  """A value of `kind` different from `value`, and how to write it on a command line."""
  if kind is bool:
    return (not value), str(not value).lower()
  if kind is int:
    v = 7 if value is None else value + 3
    return v, str(v)
  if kind is float:
    v = 0.625 if value is None else value + 0.5
    return v, repr(v)
  if kind is str:
    v = (value or "") + "x_y"
    return v, v
  if kind in (tuple, list):
    v = tuple(new_value(x, type(x))[0] for x in value) if value else (1,)
    return kind(v), "(" + ",".join(repr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  raise AssertionError(f"no command-line value for type {kind}")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_leaf_settable_from_command_line(path):
  base = config_lib.config_from_command_line([f"--config={path}"])
  argv, want, untyped = [f"--config={path}"], {}, []
  for key, value, kind in leaves(base):
    if kind is None:
      if key.split(".")[0] not in SECTIONS:
        untyped.append(key)
      continue
    v, text = new_value(value, kind)
    argv.append(f"--config.{key}={text}")
    want[key] = v
  assert not untyped, f"None defaults without a type (use config_dict.placeholder): {untyped}"
  got = config_lib.config_from_command_line(argv)
  for key, v in want.items():
    value = got
    for part in key.split("."):
      value = value[part]
    if isinstance(v, tuple):
      value = tuple(value)
    assert value == v, (key, value, v)


@pytest.mark.slow
def test_demo_summary_with_num_classes_from_command_line():
  """The issue's command: the class count of the user's own shards set on the demo."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-m", "cvrl.main", "--config=configs/demo.py",
                        "--config.data.num_classes=8", "--config.job=summary"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
