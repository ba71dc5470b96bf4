"Fixtures shared by several test modules."
import pytest
import torch

@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module that starts many small models (the test machines are small and shared);
    the setting is restored afterwards. Opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope="session")
def tok():
    "The default model's tokenizer (from the deeplens cache)."
    from transformers import AutoTokenizer
    from deeplens.model import default_model_path
    return AutoTokenizer.from_pretrained(default_model_path())
