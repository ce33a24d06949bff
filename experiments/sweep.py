"""Width x depth (x any config field) sweeps: run, or print the launch commands, then collect.

  python -m experiments.sweep --config=configs/demo.py --depths=18,50 --widths=0.125,0.25 \\
      [--set=objective.temperature=0.1,0.2 ...] --workdir=DIR [--launch=local|print] [--collect]

Every grid point is one `python -m cvrl.main` run in its own DIR/<point>/, with the grid
values as `--config.<field>=<value>` overrides (so a point is exactly reproducible from
its command). `local` runs the points in sequence and skips those whose results file
exists; `print` writes one command per point to DIR/launch.sh for a cluster scheduler.
`--collect` runs the `summary` job for each point (backbone parameters, GFLOPs per clip,
cached in DIR/<point>/summary.json), reads each point's results, and writes
DIR/sweep.csv, DIR/sweep.md and, with matplotlib (the `plots` extra), DIR/sweep.png (the
metric against parameters and against GFLOPs, one line per depth).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys

from absl import app, flags

from cvrl import config_lib
from cvrl.core import cli
from cvrl.core import paths

# Where a point's results live, relative to its workdir, in the order they are looked for:
# a downstream job's own results, or those of the probe a pretraining ran after itself.
RESULT_FILES = ("results.json", "probe/results.json")

def define_flags():
  """The sweep's command line; defined only when it runs as a program, so that importing
  this module beside cvrl.main (which owns --config) does not clash."""
  global _CONFIG, _DEPTHS, _WIDTHS, _SET, _WORKDIR, _LAUNCH, _COLLECT, _RESULTS, _METRIC, _PYTHON  # pylint: disable=global-statement
  _CONFIG = flags.DEFINE_string("config", None, "Base config, as for cvrl.main: FILE[:ARG].")
  _DEPTHS = flags.DEFINE_list("depths", [], "R3D depths (config.model.depth); empty: the config's.")
  _WIDTHS = flags.DEFINE_list("widths", [], "Width multipliers (config.model.width); empty: the "
                              "config's.")
  _SET = flags.DEFINE_multi_string("set", [], "FIELD=V1,V2,...: one more grid axis over "
                                   "config.FIELD (repeatable). Values in [] or () may hold commas.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one sub-directory per point.")
  _LAUNCH = flags.DEFINE_enum("launch", None, ["local", "print"], "Run every point here in "
                              "sequence (local) or write their commands to WORKDIR/launch.sh.")
  _COLLECT = flags.DEFINE_bool("collect", False, "Gather summaries and results into "
                               "WORKDIR/sweep.{csv,md,png}.")
  _RESULTS = flags.DEFINE_string("results", None, "A point's results file, relative to its "
                                 f"workdir (default: the first of {list(RESULT_FILES)} found).")
  _METRIC = flags.DEFINE_string("metric", "top1", "The metric plotted (a key of the results' "
                                "'metrics').")
  _PYTHON = flags.DEFINE_string("python", "python", "Interpreter named in printed commands.")


# ------------------------------------------------------------------------------- the grid

@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: tuple[tuple[str, str], ...]  # (config field, value as typed on a command line)

  def value(self, field: str) -> str | None:
    return dict(self.overrides).get(field)


def split_values(text: str) -> list[str]:
  """'1,2' -> ['1', '2']; commas inside (), [] or quotes stay: '(1,2),(3,4)' -> 2 values."""
  out, depth, quote, cur = [], 0, None, ""
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
      continue
    cur += ch
  if cur.strip():
    out.append(cur.strip())
  return out


def parse_axes(depths, widths, sets) -> list[tuple[str, list[str]]]:
  """[(config field, values)] in grid order: depth, width, then each --set."""
  axes = []
  if depths:
    axes.append(("model.depth", [str(int(d)) for d in depths]))
  if widths:
    axes.append(("model.width", [f"{float(w):g}" for w in widths]))
  for item in sets:
    if "=" not in item:
      raise ValueError(f"--set expects FIELD=V1,V2,..., got {item!r}")
    field, values = item.split("=", 1)
    field = field.strip().removeprefix("config.")
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", field):
      raise ValueError(f"--set field must be a dotted config path, got {field!r}")
    vals = split_values(values)
    if not vals:
      raise ValueError(f"--set {field}= has no values")
    axes.append((field, vals))
  fields = [f for f, _ in axes]
  if len(set(fields)) != len(fields):
    raise ValueError(f"a config field is swept twice: {fields}")
  return axes


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def point_name(overrides) -> str:
  parts = []
  for field, value in overrides:
    if field == "model.depth":
      parts.append(f"d{value}")
    elif field == "model.width":
      parts.append(f"w{value}")
    else:
      parts.append(f"{_slug(field.split('.')[-1])}{_slug(value)}")
  return "_".join(parts) or "base"


def expand(axes) -> list[Point]:
  """Every combination of the axes' values, in order (the first axis varies slowest)."""
  points = []
  for combo in itertools.product(*[[(f, v) for v in vals] for f, vals in axes]):
    points.append(Point(point_name(combo), tuple(combo)))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError("two grid points get the same directory name; rename a --set value")
  return points


# ---------------------------------------------------------------------- running the points

def point_dir(workdir: str, point: Point) -> str:
  return paths.join(workdir, point.name)


def point_args(config: str, workdir: str, point: Point) -> list[str]:
  """cvrl.main's flags for one point (without the interpreter)."""
  return ["--config=" + config, "--workdir=" + point_dir(workdir, point)] + [
      f"--config.{field}={value}" for field, value in point.overrides]


def command(python: str, config: str, workdir: str, point: Point) -> list[str]:
  return [python, "-m", "cvrl.main", *point_args(config, workdir, point)]


def results_path(directory: str, results: str | None = None) -> str | None:
  """The point's results file if it exists (None if not yet)."""
  for name in ([results] if results else RESULT_FILES):
    path = paths.join(directory, name)
    if paths.as_path(path).is_file():
      return path
  return None


def write_launch_script(config: str, workdir: str, points, python: str) -> str:
  path = paths.join(workdir, "launch.sh")
  lines = ["#!/usr/bin/env bash", "# One line per grid point; each is independent.",
           "set -euo pipefail"]
  lines += [shlex.join(command(python, config, workdir, p)) for p in points]
  paths.write_text(path, "\n".join(lines) + "\n")
  if not paths.is_url(path):
    os.chmod(path, 0o755)  # a local script is run as it is
  return path


def run_local(config: str, workdir: str, points, results: str | None = None) -> dict[str, str]:
  """Runs the points in sequence; {point: 'done' | 'skipped' | 'failed (rc N)'}.

  A point whose results file exists is skipped. Output goes to DIR/<point>/run.log.
  """
  status = {}
  for i, p in enumerate(points):
    d = point_dir(workdir, p)
    if results_path(d, results):
      status[p.name] = "skipped"
      print(f"[{i + 1}/{len(points)}] {p.name}: results exist, skipped", flush=True)
      continue
    cmd = command(sys.executable, config, workdir, p)
    print(f"[{i + 1}/{len(points)}] {p.name}: {shlex.join(cmd)}", flush=True)
    rc = run_logged(cmd, paths.join(d, "run.log"))
    status[p.name] = "done" if rc == 0 else f"failed (rc {rc})"
    if rc != 0:
      print(f"  failed (rc {rc}); see {paths.join(d, 'run.log')}", flush=True)
  return status


def run_logged(cmd, log: str) -> int:
  """Runs `cmd` with its output in `log`: written as it goes locally, uploaded at the end
  to a store (which cannot append)."""
  if paths.is_url(log):
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         check=False)
    paths.write_text(log, out.stdout)
    return out.returncode
  paths.makedirs(paths.as_path(log).parent)
  with paths.as_path(log).open("w") as f:
    return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


# --------------------------------------------------------------------------- collecting

def load_config(config: str, workdir: str, point: Point):
  """The point's config exactly as `cvrl.main` parses it from the point's flags."""
  return config_lib.config_from_command_line(point_args(config, workdir, point))


def point_summary(config: str, workdir: str, point: Point) -> dict:
  """The summary job's numbers for the point (run once, kept in DIR/<point>/summary.json)."""
  d = point_dir(workdir, point)
  path = paths.as_path(paths.join(d, "summary.json"))
  if path.is_file():
    return json.loads(path.read_text().splitlines()[0])
  import ml_collections  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import summary  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(load_config(config, workdir, point).to_dict())
  if cfg.get("data") is not None and cfg.data.get("num_classes") is None:
    # Probe configs may leave the class count to the data source; the classifier's size
    # does not change the backbone numbers the sweep reports.
    cfg.data.num_classes = 1
  return summary.run(summary.parse(cfg), d)


def collect(config: str, workdir: str, points, results: str | None = None,
            metric: str = "top1") -> list[dict]:
  """One row per point: its grid values, summary numbers and results' metrics."""
  rows = []
  for p in points:
    s = point_summary(config, workdir, p)
    row = {"point": p.name, **{f: v for f, v in p.overrides},
           "backbone_params": s["backbone_params"], "gflops_per_clip": s["gflops_per_clip"],
           "model": s["model"]}
    path = results_path(point_dir(workdir, p), results)
    if path:
      res = paths.read_json(path)
      metrics = res.get("metrics", {})
      row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
      row["results"] = path[len(workdir):].lstrip("/")
      row["status"] = "done" if metric in metrics else f"no {metric}"
    else:
      row["status"] = "no results"
    rows.append(row)
  return rows


def _columns(rows, axes_fields) -> list[str]:
  fixed = ["point", *axes_fields, "model", "backbone_params", "gflops_per_clip"]
  extra = sorted({k for r in rows for k in r} - set(fixed) - {"status", "results"})
  return fixed + extra + ["status", "results"]


def write_csv(path: str, rows, columns) -> None:
  text = io.StringIO(newline="")
  w = csv.DictWriter(text, fieldnames=columns)
  w.writeheader()
  for r in rows:
    w.writerow({c: r.get(c, "") for c in columns})
  paths.write_text(path, text.getvalue())


def _fmt(value) -> str:
  if value is None or value == "":
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def write_markdown(path: str, rows, columns, title: str) -> None:
  cols = [c for c in columns if c != "results"]
  heads = {"backbone_params": "params (M)", "gflops_per_clip": "GFLOPs/clip",
           "model.depth": "depth", "model.width": "width"}
  lines = [f"# {title}", "", "| " + " | ".join(heads.get(c, c) for c in cols) + " |",
           "|" + "---|" * len(cols)]
  for r in rows:
    cells = []
    for c in cols:
      v = r.get(c, "")
      cells.append(f"{v / 1e6:.2f}" if c == "backbone_params" and v != "" else _fmt(v))
    lines.append("| " + " | ".join(cells) + " |")
  paths.write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- the plot

def depth_series(rows, metric: str) -> dict[int, list[tuple[float, float, float]]]:
  """{depth: [(params in M, GFLOPs per clip, metric)]} of the rows that have the metric."""
  series: dict[int, list[tuple[float, float, float]]] = {}
  for r in rows:
    v = r.get(metric)
    if isinstance(v, (int, float)) and math.isfinite(v):
      depth = int(r.get("model.depth") or str(r["model"]).split("_")[0].removeprefix("r3d"))
      series.setdefault(depth, []).append((r["backbone_params"] / 1e6, r["gflops_per_clip"], v))
  return {d: sorted(pts) for d, pts in sorted(series.items())}


def figure(plt, rows, metric: str, title: str = ""):
  """`metric` against backbone parameters (M) and against GFLOPs per clip (log x), one
  line per depth."""
  series = depth_series(rows, metric)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110, sharey=True)
  for ax, (label, idx) in zip(axes, (("backbone parameters (M)", 0), ("GFLOPs per clip", 1))):
    for depth, pts in series.items():
      ax.plot([p[idx] for p in pts], [p[2] for p in pts], "o-", label=f"R3D-{depth}")
    ax.set(xscale="log", xlabel=label)
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel(metric)
  axes[1].legend(title="depth")
  fig.suptitle(title or f"{metric} against size")
  fig.tight_layout()
  return fig


def plot(path: str, rows, metric: str, title: str = "") -> bool:
  """`figure` to `path` (PNG); False, after one warning line, without matplotlib."""
  plt = cli.pyplot("wrote sweep.csv and sweep.md only")
  if plt is not None:
    with paths.as_path(path).open("wb") as f:
      cli.save_figure(plt, figure(plt, rows, metric, title), f)
  return plt is not None


# ---------------------------------------------------------------------------------- main

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  if not _LAUNCH.value and not _COLLECT.value:
    raise app.UsageError("nothing to do: pass --launch=local|print and/or --collect")
  try:
    axes = parse_axes(_DEPTHS.value, _WIDTHS.value, _SET.value)
    points = expand(axes)
    for p in points:  # every point's flags parse (a misspelt field: one line, before any run)
      load_config(_CONFIG.value, _WORKDIR.value, p)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  workdir = os.fspath(paths.makedirs(_WORKDIR.value))
  paths.write_json(paths.join(workdir, "grid.json"), {
      "config": _CONFIG.value, "axes": axes,
      "points": {p.name: dict(p.overrides) for p in points}}, indent=1)
  failed = []
  if _LAUNCH.value == "print":
    path = write_launch_script(_CONFIG.value, workdir, points, _PYTHON.value)
    print(paths.read_text(path), end="")
  elif _LAUNCH.value == "local":
    status = run_local(_CONFIG.value, workdir, points, _RESULTS.value)
    failed = [n for n, s in status.items() if s.startswith("failed")]
  if _COLLECT.value:
    rows = collect(_CONFIG.value, workdir, points, _RESULTS.value, _METRIC.value)
    columns = _columns(rows, [f for f, _ in axes])
    title = f"sweep of {os.path.basename(_CONFIG.value)}"
    write_csv(paths.join(workdir, "sweep.csv"), rows, columns)
    write_markdown(paths.join(workdir, "sweep.md"), rows, columns, title)
    plot(paths.join(workdir, "sweep.png"), rows, _METRIC.value, title)
    print(paths.read_text(paths.join(workdir, "sweep.md")), end="")
  if failed:
    print(f"sweep: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
