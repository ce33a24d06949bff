"""setup.py's version bounds against .ci/constraints.txt, the exact versions the suite
passed with (which .ci/run installs with -c): every requirement is pinned there, every pin
lies inside setup.py's bounds, and each install requirement has a lower and an upper bound."""
import ast
import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_requirements(text: str) -> dict[str, list[Requirement]]:
  """{'install': [...], '<extra>': [...]} read from setup.py's setup(...) call."""
  call = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)
              and getattr(n.func, "attr", getattr(n.func, "id", "")) == "setup")
  kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords
        if k.arg in ("install_requires", "extras_require")}
  out = {"install": [Requirement(r) for r in kw["install_requires"]]}
  out.update({e: [Requirement(r) for r in rs] for e, rs in kw["extras_require"].items()})
  return out


def constraints(text: str) -> dict[str, str]:
  """{canonical name: exact version} of a pip constraints file ('name==version' lines)."""
  pins = {}
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
      assert m, f"constraints: not an exact pin: {line!r}"
      pins[canonicalize_name(m.group(1))] = m.group(2)
  return pins


def disagreements(reqs: dict[str, list[Requirement]], pins: dict[str, str]) -> list[str]:
  bad = []
  for group, rs in reqs.items():
    for r in rs:
      version = pins.get(canonicalize_name(r.name))
      if version is None:
        bad.append(f"{group}: {r.name} is not pinned in the constraints")
      elif not r.specifier.contains(version, prereleases=True):
        bad.append(f"{group}: {r.name}=={version} is outside setup.py's {r.specifier}")
  for r in reqs["install"]:
    ops = {s.operator for s in r.specifier}
    if not ops & {">=", ">", "~=", "=="} or not ops & {"<", "<=", "~=", "=="}:
      bad.append(f"install: {r.name} needs a lower and an upper bound, has '{r.specifier}'")
  return bad


@pytest.fixture(scope="module")
def repo():
  with open(os.path.join(ROOT, "setup.py")) as f:
    reqs = setup_requirements(f.read())
  with open(os.path.join(ROOT, ".ci", "constraints.txt")) as f:
    pins = constraints(f.read())
  return reqs, pins


def test_setup_bounds_admit_every_pinned_version(repo):
  assert disagreements(*repo) == []


def test_a_pin_outside_the_bounds_an_unpinned_or_unbounded_requirement_is_caught(repo):
  reqs, pins = repo
  jax = pins["jax"]
  assert disagreements(reqs, {**pins, "jax": "0.9.0"}) == [
      "install: jax==0.9.0 is outside setup.py's " + str(
          next(r.specifier for r in reqs["install"] if r.name == "jax"))]
  assert "plots: matplotlib is not pinned in the constraints" in disagreements(
      reqs, {k: v for k, v in pins.items() if k != "matplotlib"})
  loose = {**reqs, "install": [Requirement(f"jax>={jax}")] + reqs["install"][1:]}
  assert disagreements(loose, pins) == [
      f"install: jax needs a lower and an upper bound, has '>={jax}'"]


def test_ci_installs_with_the_constraints_and_its_extra_pins_agree(repo):
  _, pins = repo
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    text = f.read()
  installs = [l for l in text.splitlines() if l.startswith("pip install") and "upgrade" not in l]
  assert installs and all("-c .ci/constraints.txt" in l for l in installs), installs
  for name, version in re.findall(r"([A-Za-z0-9._-]+)==([0-9][^\s]*)", text):
    assert pins.get(canonicalize_name(name)) == version, name
