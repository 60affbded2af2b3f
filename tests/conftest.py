import os

import pytest
import torch

# Without a GPU, the Triton kernels run in Triton's CPU interpreter. The flag is read when a
# kernel is decorated, so it must be set before detox_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Development data (RealToxicityPrompts dev split, DGHS, ToxiGen) is not part of the package. Tests
# that need it get its folder from `--dev-data DIR` or the environment variable DETOX_DEV_DATA, and
# are skipped when neither names an existing folder.
DEV_DATA_ENV = "DETOX_DEV_DATA"


def pytest_addoption(parser):
    parser.addoption("--dev-data", default=None, metavar="DIR",
                     help=f"folder of the development data (rtp/, dghs/, toxigen/); default: ${DEV_DATA_ENV}")


def resolve_dev_data(option: str | None, environ=os.environ) -> tuple[str | None, str]:
    """(the development-data folder or None, why not): the option wins over the environment."""
    path = option or environ.get(DEV_DATA_ENV) or None
    if path is None:
        return None, f"no development data: pass --dev-data DIR or set {DEV_DATA_ENV}"
    if not os.path.isdir(path):
        source = "--dev-data" if option else DEV_DATA_ENV
        return None, f"no development data: {source}={path!r} is not a folder"
    return os.path.abspath(path), ""


@pytest.fixture(scope="session")
def dev_data(pytestconfig):
    """The development-data folder; skips the test with the reason when it is not configured."""
    path, why = resolve_dev_data(pytestconfig.getoption("--dev-data"))
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def shared_data(dev_data):
    """Old name of :func:`dev_data`."""
    return dev_data
