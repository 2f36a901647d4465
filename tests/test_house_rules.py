"""The house-rule checks that `make lint` runs catch what they are for: a file over 500 lines, and an import
cycle between two modules (the layers are import-linter's own contracts, in pyproject.toml)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import grimp
import pytest

CI = Path(__file__).resolve().parents[1] / ".ci"


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, CI / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_size_check_finds_a_file_over_500_lines_and_spares_migrations(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = script("check_sizes")
    (tmp_path / "billing" / "migrations").mkdir(parents=True)
    (tmp_path / "billing" / "big.py").write_text("x = 1\n" * 501)
    (tmp_path / "billing" / "fine.py").write_text("x = 1\n" * 500)
    (tmp_path / "billing" / "migrations" / "0001_big.py").write_text("x = 1\n" * 900)
    monkeypatch.setattr(sizes, "ROOT", tmp_path)
    monkeypatch.setattr(sizes, "CHECKED", ("billing",))

    assert sizes.oversized() == [(Path("billing/big.py"), 501)]
    assert sizes.main() == 1


def test_the_cycle_check_finds_a_cycle_between_two_modules() -> None:
    cycles = script("check_cycles").cycles
    graph = grimp.ImportGraph()
    for importer, imported in (("app.a", "app.b"), ("app.b", "app.c"), ("app.c", "app.a"), ("app.d", "app.a")):
        graph.add_import(importer=importer, imported=imported)

    assert [sorted(c) for c in cycles(graph)] == [["app.a", "app.b", "app.c"]]


def test_the_tree_as_it_is_has_no_file_over_the_limit() -> None:
    assert script("check_sizes").oversized() == []
