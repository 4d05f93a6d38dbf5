"""``tests/cuda``: every block on an accelerator, compared with the CPU. Not part of ``make test``.

Run with ``make test-cuda`` (``pytest tests/cuda --device cuda``). Without ``--device`` this
folder is not collected by a plain ``pytest``, and named explicitly it fails asking for one. With ``--device cuda`` on a machine without CUDA the run stops at once
with exit code 3 and says so: never a skip that could pass for a green run. ``--device cpu``
runs the same comparisons CPU against CPU, which checks the tests themselves (the normal suite
does that for a few blocks: ``tests/test_cuda_suite.py``).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name is None:
        pytest.fail("tests/cuda needs --device (cuda, cuda:1, or cpu): see make test-cuda")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _exact_float32_matmuls() -> None:
    # TF32 would make fp32 matmuls differ from the CPU's by ~1e-3: compare real fp32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
