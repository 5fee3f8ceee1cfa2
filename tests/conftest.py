import os

# Tests never touch the network: the Hub code paths must fail fast and clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import hf_mkcd  # noqa: E402,F401  (registers the CIFAR zoo)

torch.set_num_threads(2)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
