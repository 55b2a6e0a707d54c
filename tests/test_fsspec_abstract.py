"""fsspec's own abstract test suites (copy, get, put, open, pipe) on stashfs://, on disk and S3."""

import posixpath

import pytest

fsspec = pytest.importorskip("fsspec")
from fsspec.tests import abstract  # noqa: E402

from fsdriver.fsspec_fs import StashFileSystem  # noqa: E402


class StashFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, backend):
        return StashFileSystem(backend=backend, skip_instance_cache=True)

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self):
        return "pipeline/fsspec-suite"


class TestStashCopy(abstract.AbstractCopyTests, StashFixtures):
    pass


class TestStashGet(abstract.AbstractGetTests, StashFixtures):
    pass


class TestStashPut(abstract.AbstractPutTests, StashFixtures):
    pass


class TestStashOpen(abstract.AbstractOpenTests, StashFixtures):
    pass


class TestStashPipe(abstract.AbstractPipeTests, StashFixtures):
    pass
