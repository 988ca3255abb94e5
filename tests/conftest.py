import pytest

pytest_plugins = ["engine_server"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA GPU: skipped (with the reason) where torch sees none."""
    gpu_items = [item for item in items if "gpu" in item.keywords and item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(
            reason="needs a CUDA GPU (marked gpu); run on the lent GPU, see docs/gpu_tests.md"
        )
        for item in gpu_items:
            item.add_marker(skip)
