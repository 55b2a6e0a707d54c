"""The model-based test through a real mount (fewer steps) and on a plain local directory.

The same state machine as tests/test_model_core.py (model: tests/fsmodel.py), with os.* calls:
through the kernel, its dentry, attribute and page caches take part.  Other nodes are kept out
(the daemon's clock cannot be moved), so every expectation is exact: this mount's own writes.
The mount has a short metadata TTL and the machine lets it pass now and then, so listings and
attributes come from the backend again between its own writes (issue 10, item 1).
The plain directory run checks the model itself against the local filesystem.
"""

import itertools

import pytest

from .conftest import backend_env
from .fsmodel import PathDriver, machine_settings, run_machine
from .mounting import force_unmount, make_mount, require_fuse

_n = itertools.count()
TTL = 0.05


@pytest.mark.fuse
@pytest.mark.parametrize("kind", ["disk", "s3"])
def test_mount_against_the_model(kind, request, tmp_path):
    require_fuse()
    url, env = backend_env(kind, request, tmp_path)
    m = make_mount(tmp_path, url, env, extra=["--metadata-ttl", str(TTL)])
    m.mount()
    try:
        def driver():
            ns = f"m{next(_n)}"  # a fresh namespace per example: nothing carries over but the daemon
            return PathDriver(m.path / "pipeline" / ns, m.backend, f"pipeline/{ns}/", ttl=TTL)

        run_machine(driver, other_nodes=False, config=machine_settings(examples=40, steps=40))
    finally:
        if m.mounted:
            m.umount()
        force_unmount(m.path)


def test_the_model_on_a_plain_directory(tmp_path):
    run_machine(lambda: PathDriver(tmp_path / f"d{next(_n)}"), other_nodes=False,
                config=machine_settings(examples=50, steps=30))
