"""results.json: JSON-safe values, written atomically, headline line."""
import json

import ml_collections
import numpy as np

from cvrl import config_lib
from cvrl.eval import results


def test_results_json_is_plain_json(tmp_path, capsys):
  config = ml_collections.ConfigDict(dict(job="probe", data=dict(num_classes=3)))
  path = results.write_results(str(tmp_path / "run"), {
      "metrics": {"top1": np.float32(0.5), "nan": float("nan"), "n": np.int64(3)},
      "cm": np.eye(2, dtype=np.int64), "config": config_lib.as_dict(config)})
  data = json.load(open(path))
  assert data["metrics"] == {"top1": 0.5, "nan": None, "n": 3}
  assert data["cm"] == [[1, 0], [0, 1]] and data["config"]["data"]["num_classes"] == 3
  line = results.headline("probe", {"top1": 0.25, "n": 3}, ["top1", "n", "absent"])
  assert line == "probe: top1=0.2500 n=3" and capsys.readouterr().out.strip() == line
