"""Suite-wide fixture: torch runs on one thread in every test (the tiny models run fastest that
way, and a busy 2-core CI machine is not thrashed); the previous setting is restored after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
