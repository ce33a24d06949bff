"""Import hygiene: every cvrl module imports on its own; imports only go down the folder
order (every import counted, those inside functions included), so no cycle between folders
or modules; few imports of cvrl modules inside functions; no job module imports another."""
import ast
import os
import subprocess
import sys

import pytest

from cvrl.core import discovery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules() -> dict[str, str]:
  """{dotted name: path} of every module of the cvrl package."""
  out = {}
  for directory, _, files in os.walk(os.path.join(ROOT, "cvrl")):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, f), ROOT)[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(directory, f)
  return out


# cvrl's folders (and top-level modules), lowest first: a module imports only from its own
# folder and the folders before it (README, "Architecture").
ORDER = ("core", "models", "data", "config_lib", "objectives", "engine", "eval", "jobs",
         "tools", "main")
# Imports of cvrl modules inside functions (each hides an edge from a reader of the imports;
# engine/input.py's of the tf.data pipeline keeps the train step free of TensorFlow).
MAX_LOCAL_IMPORTS = 5


def imports() -> list[tuple[str, str, bool]]:
  """(module, the cvrl module it imports, whether inside a function) for every import
  statement of every cvrl module."""
  mods = modules()
  out = []
  for name, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    local = {id(n) for fn in ast.walk(tree)
             if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
      out += [(name, target, id(node) in local) for target in _targets(node, mods)]
  return out


def _targets(node, mods) -> list[str]:
  """The cvrl modules one import statement imports (a name imported from a package that is
  its submodule: the submodule)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in mods]
  if not isinstance(node, ast.ImportFrom) or node.level or node.module not in mods:
    return []
  subs = [f"{node.module}.{a.name}" for a in node.names]
  hits = [sub for sub in subs if sub in mods]
  return hits + ([node.module] if len(hits) < len(subs) else [])


def import_graph() -> dict[str, set[str]]:
  """module -> the cvrl modules it imports anywhere in its source."""
  graph = {name: set() for name in modules()}
  for name, target, _ in imports():
    if target != name:
      graph[name].add(target)
  return graph


def folder(module: str) -> str:
  """`cvrl.data.sources.tfds` -> 'data'; `cvrl.config_lib` -> 'config_lib'; `cvrl` -> ''."""
  return module.split(".")[1] if "." in module else ""


def upward(edges) -> list[tuple[str, str]]:
  """The (module, imported) pairs of `edges` that go up ORDER."""
  rank = {f: i for i, f in enumerate(ORDER)}
  out = []
  for module, target, _ in edges:
    a, b = folder(module), folder(target)
    if a != b and rank.get(b, -1) >= rank.get(a, -1):
      out.append((module, target))
  return out


def test_imports_only_go_down_the_folder_order():
  found = {folder(m) for m in modules()} - {""}
  assert found == set(ORDER), found ^ set(ORDER)
  assert not upward(imports()), upward(imports())


def test_the_order_check_finds_an_upward_import():
  assert upward([("cvrl.data.sources", "cvrl.engine.metrics", True),
                 ("cvrl.engine.tasks", "cvrl.eval.features", True)]) == [
      ("cvrl.data.sources", "cvrl.engine.metrics"), ("cvrl.engine.tasks", "cvrl.eval.features")]
  assert upward([("cvrl.config_lib", "cvrl.data.config", False),
                 ("cvrl.data.sources.tfds", "cvrl.data.sources", False)]) == []
  assert upward([("cvrl.objectives.moco", "cvrl.config_lib", False),
                 ("cvrl.models.r3d", "cvrl.config_lib", True)]) == [
      ("cvrl.models.r3d", "cvrl.config_lib")]


def test_few_imports_of_cvrl_modules_inside_functions():
  local = [(m, t) for m, t, inside in imports() if inside]
  assert len(local) <= MAX_LOCAL_IMPORTS, local


def find_cycle(graph):
  """One cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    state[n] = 2
    stack.pop()
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def is_ancestor_edge(a, b):
  """A package and its own submodules import each other by design (the package's
  __init__ re-exports them)."""
  return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycle_between_cvrl_modules():
  graph = {n: {m for m in e if not is_ancestor_edge(n, m)} for n, e in import_graph().items()}
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_a_job_but_the_entry_point():
  """Jobs sit at the top: the engine, evaluators, data and models never reach up into one,
  and no job leans on another."""
  graph = import_graph()
  jobs = {f"cvrl.jobs.{name}" for name in discovery.names("cvrl.jobs", "run")}
  assert jobs and jobs <= set(graph), jobs - set(graph)
  for module, imported in graph.items():
    if module != "cvrl.main":
      assert not imported & (jobs - {module}), (module, imported & jobs)


@pytest.mark.slow
def test_every_cvrl_module_imports_on_its_own():
  """Each module imported into an interpreter holding no cvrl module (one process, cvrl
  unloaded between imports): no module relies on another having been imported first."""
  script = (
      "import importlib, sys\n"
      "names = sys.argv[1:]\n"
      "for name in names:\n"
      "  for m in [m for m in sys.modules if m == 'cvrl' or m.startswith('cvrl.')]:\n"
      "    del sys.modules[m]\n"
      "  importlib.import_module(name)\n"
      "print('imported', len(names))\n")
  names = sorted(modules())
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"imported {len(names)}" in out.stdout


HEAVY = ("tensorflow", "cvrl.jobs", "cvrl.engine", "cvrl.eval", "cvrl.data.pipeline")


def _modules_a_config_loads(path: str) -> set[str]:
  """The top-level packages and cvrl modules in a fresh interpreter after loading the
  config file at `path` and calling its get_config()."""
  script = (
      "import importlib.util, json, sys\n"
      "spec = importlib.util.spec_from_file_location('c', sys.argv[1])\n"
      "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
      "m.get_config()\n"
      "print(json.dumps(sorted(sys.modules)))\n")
  r = subprocess.run([sys.executable, "-c", script, path], cwd=ROOT, capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr[-2000:]
  import json  # pylint: disable=import-outside-toplevel
  return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_configs_load_without_tensorflow_jobs_engine_or_evaluators():
  """Every default lives with the config builders (cvrl.config_lib): parsing a config pulls
  in no TensorFlow, job, engine, evaluator or pipeline. JAX and Flax come in only with a
  method's own module (its defaults live in its one file, `objective_config`, so a new
  method stays one file): a config that names no method module loads none of them."""
  configs = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                   if f.endswith(".py") and f != "__init__.py")
  assert "demo.py" in configs
  for name in configs:
    path = os.path.join(ROOT, "configs", name)
    loaded = _modules_a_config_loads(path)
    heavy = {m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)}
    assert not heavy, (name, sorted(heavy))
    with open(path) as f:
      names_a_method = "from cvrl.objectives import" in f.read()
    if not names_a_method:
      assert not {"jax", "flax"} & loaded, (name, sorted({"jax", "flax"} & loaded))
