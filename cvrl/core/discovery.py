"""One way to find a component by the name a config gives it.

A component of a kind is a module of the kind's package, found by its name: job N is
`cvrl/jobs/N.py`, method N `cvrl/objectives/N.py`, evaluator N `cvrl/eval/N.py`, source N
`cvrl/data/sources/N.py`, sampler N `cvrl/data/samplers/N.py`. A dotted name is a module
path taken as it is (a component outside cvrl, e.g. the tests' in-memory source). The
module's one entry point is a module-level name: `run(config, workdir)` for a job, `make`
(a class or a function: the constructor, its arguments the component's fields) for the
others. A module of the package that does not define the entry point is a helper, not a
component. An unknown name is a ValueError that lists the names.

Listing the names reads the package's files and imports none of them (a source's module
may import TensorFlow, which the sources' own package must not).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil


def _defines(path: str, entry: str) -> bool:
  """Whether the module file at `path` defines `entry` at its top level."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == entry:
      return True
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == entry for t in node.targets):
      return True
    if isinstance(node, ast.ImportFrom) and any(
        (a.asname or a.name) == entry for a in node.names):
      return True
  return False


def names(package: str, entry: str = "make") -> list[str]:
  """The components of `package`: its modules (not `_private`) that define `entry`."""
  found = []
  for folder in importlib.util.find_spec(package).submodule_search_locations:
    for m in pkgutil.iter_modules([folder]):
      path = os.path.join(folder, f"{m.name}.py")
      if not m.ispkg and not m.name.startswith("_") and _defines(path, entry):
        found.append(m.name)
  return sorted(found)


def _module(package: str, name):
  """The module `name` names in `package`, or None when there is none."""
  if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
    return None
  path = name if "." in name else f"{package}.{name}"
  try:
    return importlib.import_module(path)
  except ModuleNotFoundError as e:
    if path != e.name and not path.startswith(f"{e.name}."):
      raise  # the component's own module failed to import something: not a bad name
    return None


def module(package: str, name, field: str, entry: str = "make"):
  """The module of component `name` of `package`; `field` names the config field in the
  error (ValueError listing the names) when there is no such component."""
  found = _module(package, name)
  if found is None or not hasattr(found, entry):
    where = package.replace(".", "/")
    raise ValueError(f"{field} must be one of {', '.join(names(package, entry))}, got "
                     f"{name!r} (a module {where}/<name>.py defining {entry})")
  return found


def find(package: str, name, field: str, entry: str = "make"):
  """The entry point of component `name` of `package` (see `module`)."""
  return getattr(module(package, name, field, entry), entry)
