import os

import pytest
import torch

# Without a GPU, the Triton kernels run in Triton's CPU interpreter. The flag is read when a
# kernel is decorated, so it must be set before detox_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


@pytest.fixture
def shared_data():
    path = os.path.join(SHARED, "data")
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present (only on the project's machines)")
    return path
