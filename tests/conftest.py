import pytest
import torch

import cvops

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
requires_ops = pytest.mark.skipif(not cvops.has_ops(), reason="cvops._C is not built")


def devices():
    """CPU always; CUDA as a parameter that skips without a GPU."""
    return ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
