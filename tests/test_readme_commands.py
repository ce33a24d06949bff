"""Every command README.md shows runs, so none of them rots.

What counts as a command: a line of a fenced ``` block or of a 4-space-indented block
(lines ending in a backslash joined to the next), or an inline `code span`, that runs
`python -m cvrl.<module> ...`, `python -m experiments.<program> ...` or `python -m
pytest` (skipped). Each unique one is run once, in a subprocess, from the repository
root, by these rules:

* `python -m cvrl.main ...` runs for real as the summary job (`--config.job=summary`
  appended: it parses the config file, its arg and every `--config.KEY=VALUE` exactly as
  any job does, then allocates nothing and reads no data). A config file that does not
  exist or a key that does not exist exits 2 (`cvrl: error: ...`) and fails the test.
  Placeholders: `--workdir=ANY` (DIR, gs://bucket/...) becomes a fresh tmp dir; a bare
  `...` (elided flags) is dropped; the template's `configs/<recipe>.py[:arg]` is run as
  configs/demo.py and its `[--config.key=value ...]` dropped (PLACEHOLDERS). Data globs
  ('/data/k600/train-*') and `--config.pretrained=gs://...` are kept as written: the
  summary job parses and type-checks them but never opens them (cvrl.jobs.summary.READS_INPUTS).
* Any other module runs with `--help` only (the README's lines need data, checkpoints or
  hours): exit 0 (HELP_EXIT lists the known exceptions), and its usage names every flag
  the README's line uses, optional `[--flag]` ones included; a `--config=FILE.py` it
  names must exist.
* Any other `<placeholder>` fails: add a rule for it here.

SKIPPED lists the lines that are not run, with why; a skipped line no longer in the
README fails too (remove it from SKIPPED). `test_checks_catch_a_broken_readme` runs the
same checks on a copy of the README with a misspelt config key, a missing config file and
an unknown flag, and expects each to fail.
"""
import functools
import os
import re
import shlex
import subprocess
import sys
from concurrent import futures

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

SKIPPED = {
    # The install + demo line: the install is what .ci/run does before the suite, and the
    # demo (400 steps, minutes) runs end to end, shortened, in tests/test_demo.py.
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && "
    "python -m cvrl.main --config=configs/demo.py --workdir=/tmp/cvrl_demo":
        "install (.ci/run) + demo (tests/test_demo.py)",
    # The test suite itself, its fast subset and one file of it.
    "python -m pytest tests -q -n 2 --dist loadfile": "the test suite itself",
    'python -m pytest tests -m "not slow" -n 2': "the suite's fast subset",
    "python -m pytest tests/test_objectives_byol.py -q": "one file of the suite",
}
# README text -> what runs instead (cvrl.main's template line).
PLACEHOLDERS = {
    "configs/<recipe>.py[:arg]": "configs/demo.py",
    "[--config.key=value ...]": "",
}
# module -> the exit status of its `--help` when not 0, and why.
HELP_EXIT: dict = {}  # module -> its --help exit status, where it is not 0
# module -> how its usage is printed when `python -m module --help` cannot.
HELP_ARGV: dict = {}  # module -> how its usage is printed where `--help` cannot
_COMMAND = re.compile(r"\bpython3? -m (cvrl\.|experiments\.|pytest\b)")


def commands(path=README) -> list[str]:
  """Every command line README `path` shows, in order, each once, whitespace collapsed."""
  text = open(path, encoding="utf-8").read()
  lines = []
  fences = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
  for block in fences.findall(text):
    lines += block.replace("\\\n", " ").splitlines()
  rest = fences.sub("", text)
  indented = "\n".join(l[4:] if l.startswith("    ") else "" for l in rest.splitlines())
  lines += indented.replace("\\\n", " ").splitlines()
  lines += re.findall(r"`([^`]+)`", re.sub(r"^    .*$", "", rest, flags=re.M))
  out = []
  for line in lines:
    line = " ".join(line.split())
    if line and not line.startswith("#") and _COMMAND.search(line) and line not in out:
      out.append(line)
  return out


def _env():
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(argv, timeout=300):
  p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=timeout, check=False)
  return p.returncode, p.stdout, p.stderr


@functools.lru_cache(maxsize=None)
def usage(module: str):
  """(exit status, stdout + stderr) of the module's --help: one subprocess per module."""
  rc, out, err = _run(HELP_ARGV.get(module, ["-m", module, "--help"]))
  return rc, out + err


def words_of(line: str) -> list[str]:
  """The command's words from `python -m` on, cvrl.main's template placeholders replaced."""
  for text, runnable in PLACEHOLDERS.items():
    line = line.replace(text, runnable)
  words = shlex.split(line[_COMMAND.search(line).start():])
  assert not any(w in ("&&", "|", ";") for w in words), f"a chain: split it or skip it: {line}"
  return words


def main_argv(words: list[str], workdir: str) -> list[str]:
  """cvrl.main's argv as the summary job, by the module docstring's rules."""
  argv = []
  for w in words[3:]:
    if w == "...":
      continue
    if w.startswith("--workdir="):
      w = f"--workdir={workdir}"
    assert not re.search(r"<\w+>|^\[|\]$", w), f"no rule for the placeholder in {w!r}"
    argv.append(w)
  return ["-m", "cvrl.main", *argv, "--config.job=summary"]


def check_main(line: str, workdir: str):
  rc, out, err = _run(main_argv(words_of(line), workdir))
  assert rc == 0, f"{line}\n  exit {rc}: {err.strip()[-2000:]}"
  assert '"job": "summary"' in out.strip().splitlines()[-1], out


def check_help(line: str):
  words = words_of(line)
  module = words[2]
  flags = []
  for w in words[3:]:
    w = w.strip("[]")
    if w.startswith("--"):
      name, _, value = w[2:].partition("=")
      flags.append(name)
      if name == "config" and value.endswith(".py"):
        assert os.path.isfile(os.path.join(ROOT, value)), f"{line}: no config file {value}"
  rc, text = usage(module)
  assert rc == HELP_EXIT.get(module, 0), f"{module} --help: exit {rc}\n{text[-2000:]}"
  # A flag's own line in the usage (absl: `  --[no]name: ...`; argparse: `  -x X, --name X`),
  # not a mention in the program's description.
  missing = [f for f in flags
             if not re.search(rf"^ +(-\w+( \w+)?, )?--(\[no\])?{re.escape(f)}\b", text, re.M)]
  assert not missing, f"{line}\n  {module} --help names no {missing}:\n{text[-3000:]}"


def check(line: str, workdir: str):
  words = words_of(line)
  assert words[:2] in (["python", "-m"], ["python3", "-m"]), line
  if words[2] == "cvrl.main":
    check_main(line, workdir)
  else:
    check_help(line)


def check_all(lines, tmp_path) -> dict:
  """line -> None (passed) or the AssertionError's message; the runs two at a time."""
  def one(i_line):
    i, line = i_line
    try:
      check(line, str(tmp_path / f"cmd{i}"))
      return line, None
    except AssertionError as e:
      return line, str(e)
  with futures.ThreadPoolExecutor(max_workers=2) as pool:
    return dict(pool.map(one, enumerate(lines)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  lines = [l for l in commands() if l not in SKIPPED]
  return check_all(lines, tmp_path_factory.mktemp("readme"))


def test_readme_has_the_commands_it_should():
  lines = commands()
  stale = [s for s in SKIPPED if s not in lines]
  assert not stale, f"SKIPPED lines no longer in README.md (remove them): {stale}"
  modules = {words_of(l)[2] for l in lines if l not in SKIPPED}
  assert {"cvrl.main", "cvrl.data.convert", "cvrl.tools.import_tf_checkpoint",
          "experiments.sweep", "experiments.bench_quality", "experiments.bench_input",
          "experiments.bench_step", "experiments.bench_vs_torch"} <= modules, modules
  assert sum(words_of(l)[2] == "cvrl.main" for l in lines if l not in SKIPPED) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len([l for l in commands() if l not in SKIPPED])))
def test_readme_command_runs(index, results):
  line = [l for l in commands() if l not in SKIPPED][index]
  assert results[line] is None, results[line]


@pytest.mark.slow
def test_checks_catch_a_broken_readme(tmp_path):
  """The same extractor and checks on a README copy with three broken commands."""
  text = open(README, encoding="utf-8").read()
  good = "python -m cvrl.main --config=configs/cvrl_k600_r3d50.py:depth=152,width=3 " \
         "--config.job=summary"
  assert good in text
  broken = {
      good.replace("--config.job", "--config.model.dpeth=50 --config.job"): "dpeth",
      good.replace("cvrl_k600_r3d50", "cvrl_k600_r3d5O"): "cvrl_k600_r3d5O",
      "python -m experiments.sweep --config=configs/demo.py --depth=18": "depth",
  }
  copy = tmp_path / "README.md"
  copy.write_text(text + "\n```bash\n" + "\n".join(broken) + "\n```\n", encoding="utf-8")
  lines = commands(str(copy))
  assert set(broken) <= set(lines)
  failures = check_all(list(broken), tmp_path)
  for line, word in broken.items():
    assert failures[line] is not None and word in failures[line], (line, failures[line])
