"""The model-based test of the core (no kernel), on disk and on S3 (moto): random operations of
this mount interleaved with other nodes' changes and the passage of the metadata TTL, checked
after every step against the reference model in `tests.fsmodel` (its docstring states the model).

`make test` runs a short search; a longer one:
``STASHFS_MODEL_EXAMPLES=500 STASHFS_MODEL_STEPS=100 .venv/bin/python -m pytest tests/test_model_core.py``.
"""

import itertools

import pytest

from .fsmodel import CoreDriver, machine_settings, run_machine

_n = itertools.count()


# Reads of a file another node rewrote within the TTL may fail with ESTALE (logged as a warning).
@pytest.mark.expected_log(r"ESTALE|changed|[Pp]recondition")
def test_core_against_the_model(backend, tmp_path):
    settings = machine_settings(examples=200 if backend.local_path("x") is not None else 60, steps=50)
    run_machine(lambda: CoreDriver(backend, tmp_path / f"cache{next(_n)}"), other_nodes=True, config=settings)
