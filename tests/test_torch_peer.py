"""The PyTorch peer at tiny sizes: dallex's half always (PyTorch is an
optional extra the suite does not install), the ratio when PyTorch is there.
Run in a subprocess: its absl flags clash with other experiment scripts'."""

import importlib.util
import re

from conftest import run_python


def test_the_peer_times_dallex_and_says_what_pytorch_needs_or_gives_the_ratio():
  out = run_python(
      "-m",
      "experiments.torch_peer",
      "--batch=4",
      "--length=8",
      "--emb=8",
      "--hidden=16",
      "--resolution=8",
      "--steps=1",
      "--repeats=1",
  )
  rates = dict(
      re.findall(r"^  (dallex|PyTorch) +(\d+) images/s", out.stdout, re.M)
  )
  assert int(rates["dallex"]) > 0, out.stdout
  if importlib.util.find_spec("torch") is None:
    assert out.returncode != 0
    assert "needs PyTorch" in out.stderr and "'.[peer]'" in out.stderr
    return
  assert out.returncode == 0, out.stderr[-3000:]
  ratio = float(re.search(r"dallex / PyTorch: ([\d.]+)", out.stdout).group(1))
  assert (
      abs(ratio - int(rates["dallex"]) / int(rates["PyTorch"]))
      < 0.05 + 0.1 * ratio
  )
