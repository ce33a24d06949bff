"""The demo's linear probe on its own: probe a demo pretraining workdir (and a random-init
encoder of the same architecture) exactly as the demo does after pretraining.
  python -m cvrl.main --config=configs/demo_probe.py:pretrained=/tmp/cvrl_demo --workdir=DIR
Data, model and probe settings come from configs/demo.py (`probe.demo_fields()` unless
the demo config sets its own `probe`).
"""
from configs import demo
from cvrl import config_lib
from cvrl.train import probe


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, pretrained="", steps=150)
  pre = demo.get_config(f"steps={arg.steps}")
  if not pre.get("probe"):
    pre.probe = probe.demo_fields()
  return probe.config_after_pretrain(pre, arg.pretrained)
