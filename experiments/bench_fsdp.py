"""Step time of parallel.param_sharding='fsdp' against 'replicated' (one JSON line).

  nice -n 10 python -m experiments.bench_fsdp [--config=configs/demo.py] [--set k=v ...]
      [--steps 5] [--devices 8]

Both shardings run the config's full pretraining step (bench_step's config mode) in one
process on the same devices (`--devices` fake CPU devices when the backend is the CPU),
interleaved `--rounds` times, best step time each; prints their seconds and the ratio
fsdp / replicated, with the per-device state bytes the summary job states for each. On CPU
devices the all-gathers and reduce-scatters are memory copies: the real cost of fsdp (ICI
or network collectives against the step's compute) shows only on a slice.
"""
from __future__ import annotations

import json
import sys

import jax


def _parse(argv):
  from cvrl.core import cli  # pylint: disable=import-outside-toplevel
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--set", action="append", default=[], help="override key.sub=value")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
  parser.add_argument("--rounds", type=int, default=2, help="interleaved measurements each")
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (CPU only)")
  return parser.parse_args(argv)


def measure(args) -> dict:
  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import summary
  from experiments import bench_step
  out = {"backend": jax.default_backend(), "devices": jax.device_count(),
         "config": args.config, "overrides": list(args.set)}
  best = {}
  for _ in range(args.rounds):
    for mode in ("replicated", "fsdp"):
      config = bench_step.load_config(args.config, [*args.set, f"parallel.param_sharding={mode}",
                                                    "job=summary"])
      parts = bench_step._step_parts(config, None)  # pylint: disable=protected-access
      _, wall, _, loss = bench_step._run_steps(parts, args.steps)  # pylint: disable=protected-access
      best[mode] = min(best.get(mode, wall), wall)
      out[mode] = {"step_s": round(best[mode], 4), "loss": loss,
                   "state": summary.summarize(summary.parse(config))["state_bytes_per_device"]}
  out["fsdp_over_replicated"] = round(best["fsdp"] / best["replicated"], 3)
  out["note"] = ("CPU devices: collectives are memory copies; fsdp's real cost shows only on "
                 "a slice")
  return out


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  jax.config.update("jax_num_cpu_devices", args.devices)  # the CPU backend's only
  print(json.dumps(measure(args)), flush=True)


if __name__ == "__main__":
  main()
