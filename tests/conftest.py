"""Shared test setup and the ``--device`` option.

``pytest --device cuda`` runs the device-sensitive tests (flows, policies,
novelty, memory, agents: every test that takes the ``device`` fixture) on
the GPU; everything else stays pinned to the CPU.  The default is ``cpu``.
Asking for a device this machine does not have is a usage error, never a
skip: a run that asked for CUDA cannot go green without it.

Two environment variables shake out assumptions of one thread count or one
test order (results that hold only for some batchings or kernels):

* ``FLOWRL_TEST_THREADS=N``: torch threads of the test process (default 1);
* ``FLOWRL_TEST_SHUFFLE=SEED``: run the collected tests in an order shuffled
  with ``SEED`` (each xdist worker shuffles alike, so they agree on the order).
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise pytest.UsageError(f"{name} must be an integer, got {value!r}") from None


THREADS = _env_int("FLOWRL_TEST_THREADS", 1)
if THREADS < 1:
    raise pytest.UsageError(f"FLOWRL_TEST_THREADS must be >= 1, got {THREADS}")
torch.set_num_threads(THREADS)


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


def pytest_collection_modifyitems(session, config, items):
    seed = os.environ.get("FLOWRL_TEST_SHUFFLE", "").strip()
    if seed:
        random.Random(_env_int("FLOWRL_TEST_SHUFFLE", 0)).shuffle(items)


def pytest_report_header(config):
    seed = os.environ.get("FLOWRL_TEST_SHUFFLE", "").strip()
    return f"flowrl: torch threads {torch.get_num_threads()}, test order " + (f"shuffled (seed {seed})" if seed else
                                                                               "as collected")


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device the device-sensitive tests run on (``--device``, default ``cpu``)."""
    return torch.device(pytestconfig.getoption("--device"))
