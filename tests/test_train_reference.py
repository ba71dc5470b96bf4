"""The trainer rebuilt on `TrainConfig` (issue 17) trains as the one before it did. tests/data/train_reference.safetensors
holds the weights the old trainer gave (see tests/data/make_train_reference.py for how it was written); the same
run with today's code must give them again. On the machine that wrote the file they are equal bit for bit (checked
when it was written); on another CPU its BLAS may round differently, so the check allows rounding (rtol 1e-5)."""
import sys
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import make_train_reference as ref                                           # noqa: E402

REFERENCE = load_file(str(DATA / "train_reference.safetensors"))

@pytest.mark.parametrize("arch", ref.ARCHS)
def test_trainer_gives_the_weights_it_gave_before_the_config(arch):
    got = ref.run(arch)
    want = {k: v for k, v in REFERENCE.items() if k.startswith(f"{arch}.")}
    assert sorted(got) == sorted(want)
    for k in want: torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
