"""Server processes move what they load at startup out of the garbage collector's generations (gc.freeze),
so that collections between requests and tasks scan only what those allocate."""

from __future__ import annotations

import gc
import subprocess
import sys


def _frozen_after(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", f"import gc\n{code}\nprint(gc.get_freeze_count())"],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_the_web_entry_points_freeze_what_they_loaded():
    assert _frozen_after("import portal.wsgi") > 10_000
    assert _frozen_after("import portal.asgi") > 10_000


def test_a_worker_pool_process_freezes_what_it_was_forked_with():
    from celery.signals import worker_process_init

    from portal.celery import _freeze_what_is_loaded

    assert any(receiver() is _freeze_what_is_loaded for _, receiver in worker_process_init.receivers)
    before = gc.get_freeze_count()
    try:
        worker_process_init.send(sender=None)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
