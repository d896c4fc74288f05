import pytest
from data_fixtures import scene, write_panoptic


@pytest.fixture
def panoptic_dataset(tmp_path):
    """Two images of the hand-built scene (the second of odd size 23x31)."""
    return write_panoptic(tmp_path / "pan", [scene(), scene(23, 31)])
