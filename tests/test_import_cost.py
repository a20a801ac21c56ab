"""``import torchcb`` loads torch and numpy, and nothing optional: TensorBoard, requests, Keras and
tqdm are imported only by the callback that uses them, when it is used.

torch itself may import some of these (recent releases import tqdm); what is checked is what
torchcb adds on top of ``import torch``.
"""

import json
import os
import pathlib
import subprocess
import sys

import torchcb

OPTIONAL = ("tensorboard", "torch.utils.tensorboard", "requests", "keras", "tqdm", "sklearn", "torchmetrics")

PROBE = """
import json, sys
import torch
before = set(sys.modules)
import torchcb
import torchcb.callbacks
added = set(sys.modules) - before
print(json.dumps(sorted(added)))
"""


def _added_modules():
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(torchcb.__file__).parent.parent))
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_torchcb_imports_no_optional_package():
    added = _added_modules()
    assert "torchcb.callbacks.tensorboard" in added  # the probe really imported every callback module
    loaded = [name for name in added if name.split(".")[0] in OPTIONAL or name.startswith(OPTIONAL)]
    assert loaded == []
