"""README's "A batch's path" against the code: every hop where the list says, the counts it
states (and the issue's targets), and the call stacks of a 1-step demo run stopped when the
loss is traced."""
import functools
import importlib
import importlib.util
import os
import re
import sys
import types

import pytest
from absl import app

from cvrl import main
from cvrl.core import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CVRL = os.path.join(ROOT, "cvrl") + os.sep
MAX_HOPS, MAX_REENTRIES = 20, 3  # the README's architecture targets


def readme_section() -> str:
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  start = text.index("**A batch's path**")
  return text[start:text.index("After the loss the step applies", start)]


def parse_hops(section: str) -> list[dict]:
  """[{n, folder, file, qualname, reentry}] of the numbered list: the first backticked name
  is `folder/module.Qual.name` (`main.x` for cvrl/main.py); each "'s `f`" after it names
  a function nested in the one before."""
  hops = []
  for m in re.finditer(r"^ ?(\d+)\. ((?:`[^`]+`(?:'s )?)+)(.*)$", section, re.M):
    names = re.findall(r"`([^`]+)`", m.group(2))
    module, qualname = names[0].split(".", 1)
    for inner in names[1:]:
      qualname += f".<locals>.{inner}"
    folder = module.split("/")[0] if "/" in module else module
    hops.append(dict(n=int(m.group(1)), folder=folder, qualname=qualname,
                     file=os.path.join(CVRL, module + ".py"),
                     reentry="(*re-entry*)" in m.group(3)))
  return hops


def counts(hops) -> tuple[int, int]:
  """(hops, re-entries: hops into a folder the path had been in and left)."""
  left, reentries = set(), 0
  for before, hop in zip(hops, hops[1:]):
    if hop["folder"] != before["folder"]:
      left.add(before["folder"])
      reentries += hop["folder"] in left
  return len(hops), reentries


def code_names(path: str) -> set[str]:
  """Qualified names of every function in a source file, nested ones included."""
  found, todo = set(), [compile(open(path, encoding="utf-8").read(), path, "exec")]
  while todo:
    code = todo.pop()
    found.add(code.co_qualname)
    todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
  return found


HOPS = parse_hops(readme_section())


def test_the_list_names_functions_that_exist_and_states_its_counts():
  assert [h["n"] for h in HOPS] == list(range(1, len(HOPS) + 1)) and len(HOPS) > 10
  for hop in HOPS:
    assert os.path.isfile(hop["file"]), hop
    assert hop["qualname"] in code_names(hop["file"]), hop
  n, reentries = counts(HOPS)
  assert reentries == sum(h["reentry"] for h in HOPS)  # the marks are where the folders say
  folders = len({h["folder"] for h in HOPS})
  stated = re.search(r"(\d+) hops over (\d+) folders .*?(\d+) of them back into a folder",
                     readme_section(), re.S)
  assert tuple(map(int, stated.groups())) == (n, folders, reentries)
  assert n <= MAX_HOPS and reentries <= MAX_REENTRIES


class Traced(Exception):
  """Stops the run once the loss is traced."""


def cvrl_frames(frame) -> list[tuple[str, str]]:
  """(file, qualname) of the cvrl functions on `frame`'s stack, outermost first."""
  out = []
  while frame is not None:
    if frame.f_code.co_filename.startswith(CVRL):
      out.append((frame.f_code.co_filename, frame.f_code.co_qualname))
    frame = frame.f_back
  return out[::-1]


def hop_of(file: str, qualname: str) -> int | None:
  """The hop a frame belongs to: its function, or one nested in a hop's function."""
  owners = [h for h in HOPS if file == h["file"] and (
      qualname == h["qualname"] or qualname.startswith(h["qualname"] + ".<locals>."))]
  return max(owners, key=lambda h: len(h["qualname"]))["n"] if owners else None


def owner(hop):
  """(object holding the hop's function, attribute name); None for a nested function."""
  if "<locals>" in hop["qualname"]:
    return None
  name = os.path.relpath(hop["file"], ROOT)[:-3].replace(os.sep, ".")
  obj, *path = [importlib.import_module(name)] + hop["qualname"].split(".")
  for part in path[:-1]:
    obj = getattr(obj, part)
  return obj, path[-1]


def probe(records, hop, fn, stop: bool):
  @functools.wraps(fn)
  def recorded(*args, **kwargs):
    records.append((hop["n"], cvrl_frames(sys._getframe(1))))  # pylint: disable=protected-access
    if stop:
      raise Traced()
    return fn(*args, **kwargs)
  return recorded


def demo_config():
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(ROOT, "configs",
                                                                             "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("steps=1,probe=False,videos=16,batch_size=8")
  c.data.synthetic.update(num_frames=24, size=32, num_shards=2, num_eval_videos=8)
  return c


@pytest.mark.slow  # a job end to end, stopped at the loss's trace
def test_a_one_step_demo_run_calls_the_hops_in_the_listed_order(tmp_path, monkeypatch):
  records = []
  for hop in HOPS:
    place = owner(hop)
    if place is not None:
      monkeypatch.setattr(*place, probe(records, hop, getattr(*place), hop is HOPS[-1]))
  monkeypatch.setattr(main, "_CONFIG", types.SimpleNamespace(value=demo_config()))
  monkeypatch.setattr(main, "_WORKDIR", types.SimpleNamespace(value=str(tmp_path / "wd")))
  monkeypatch.setattr(cli, "quiet_native_logs", lambda argv=None: None)
  monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
  monkeypatch.setattr(app, "run", lambda f, argv, flags_parser: f(argv))  # flags: above
  with pytest.raises(Traced):
    cli.run(main.main, argv=["cvrl.main"])
  on_path = {}  # hop -> the hops on the stack of a call of it on the path
  for n, frames in records:
    on_stack = [hop_of(*f) for f in frames]
    if None not in on_stack and on_stack == sorted(on_stack) and on_stack[-1:] < [n]:
      on_path.setdefault(n, on_stack)
  # Every probed hop is called on the path at least once (other calls, e.g. the first
  # batch's picture finishing its clips, may branch off it) ...
  assert set(on_path) == {n for n, _ in records}, {n: [f for f in fs if hop_of(*f) is None]
                                                   for n, fs in records if n not in on_path}
  # ... and the rest were on those stacks: the loss's holds its on-stack hops in order.
  assert set(on_path).union(*on_path.values()) == {h["n"] for h in HOPS}
  assert records[-1][0] == HOPS[-1]["n"] and HOPS[-1]["n"] in on_path
