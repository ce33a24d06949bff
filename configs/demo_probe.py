"""The linear probe job on a demo pretraining workdir (and a random-init encoder of the
same architecture), on cached features of the synthetic data:
  python -m cvrl.main --config=configs/demo_probe.py:pretrained=/tmp/cvrl_demo --workdir=DIR
Data and model come from configs/demo.py; the probe's fields from
`cvrl.train.downstream.demo_probe_fields`.
"""
from configs import demo
from cvrl import config_lib
from cvrl.train import downstream


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, pretrained="", steps=150)
  pre = demo.get_config(f"steps={arg.steps}")
  return downstream.probe_config_for(pre, arg.pretrained, downstream.demo_probe_fields())
