import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_single_thread(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    # the tests' tiny tensors run fastest on one thread; two threads on a busy 2-core machine wait on each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
