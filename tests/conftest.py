"""Shared test setup and the ``--device`` option.

``pytest --device cuda`` runs the device-sensitive tests (flows, policies,
novelty, memory, agents: every test that takes the ``device`` fixture) on
the GPU; everything else stays pinned to the CPU.  The default is ``cpu``.
Asking for a device this machine does not have is a usage error, never a
skip: a run that asked for CUDA cannot go green without it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--device", default="cpu",
        help="device of the device-sensitive tests (the `device` fixture): cpu (default), cuda or cuda:N",
    )


def pytest_configure(config):
    name = config.getoption("--device")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise pytest.UsageError(f"--device {name!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"--device {name!r} but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise pytest.UsageError(f"--device {name!r} but only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise pytest.UsageError(f"--device must be cpu or cuda[:N], got {name!r}")


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device the device-sensitive tests run on (``--device``, default ``cpu``)."""
    return torch.device(pytestconfig.getoption("--device"))
