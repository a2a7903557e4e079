"""How results name their data (issue 15): one helper, `hlb_utils.data.data_label`, so that a row says
"JPEG replica" or "CIFAR-10" instead of a path. Sources are simulated by empty folders and names."""
import pytest

from hlb_utils import data

from synthetic import synthetic_dataset


@pytest.mark.parametrize("source", ["~/Downloads/cifar10-jpeg.tar.gz", "/data/CIFAR10-JPEG.tgz",
                                    "/data/cifar10-jpeg"])
def test_the_replica_is_named_by_its_file_or_folder(source):
    assert data.data_label(source) == "JPEG copy of CIFAR-10"


def test_a_folder_the_replica_was_unpacked_into_is_the_replica(tmp_path):
    (tmp_path / "cifar10-jpeg" / "train").mkdir(parents=True)
    assert data.data_label(tmp_path) == "JPEG copy of CIFAR-10"


def test_torchvisions_download_is_cifar10(tmp_path):
    (tmp_path / "cifar10-torchvision" / data.TORCHVISION_FOLDER).mkdir(parents=True)
    assert data.data_label(tmp_path / "cifar10-torchvision") == "CIFAR-10"


def test_other_sources_are_not_passed_off_as_cifar10(tmp_path):
    (tmp_path / "my-photos" / "train").mkdir(parents=True)
    assert data.data_label(tmp_path / "my-photos") == "own images (my-photos)"
    assert data.data_label("/data/cifar10-png.tar.gz") == "own images (cifar10-png.tar.gz)"
    assert data.data_label(synthetic_dataset(20, 10).source) == "synthetic"


def test_the_replica_itself_is_labelled_so(replica):
    assert data.data_label(replica) == "JPEG copy of CIFAR-10"
