"""Suite-wide settings: the tests use small tensors, for which one CPU thread is fastest
and immune to oversubscription when other processes share the cores."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def single_thread():
    """Every test starts on one thread, whatever an earlier test (an example's ``main``) set."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
