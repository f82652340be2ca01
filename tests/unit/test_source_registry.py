"""The source registry: a defined order, ``before=``, entry points read once, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from flq_audit import sources
from flq_audit.errors import SourceError
from flq_audit.sources import LocalFolderSource, open_source, register_source, source_families


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """Each test changes a copy of the registry; entry points are read again."""
    monkeypatch.setattr(sources, "SOURCE_FAMILIES", dict(sources.SOURCE_FAMILIES))
    monkeypatch.setattr(sources, "_ENTRY_POINTS_LOADED", False)


def _family(name: str, claims: str = "") -> type[LocalFolderSource]:
    """A local-folder family that claims specs starting with ``claims`` (``NAME:`` by default)."""
    prefix = claims or f"{name}:"

    class Family(LocalFolderSource):
        @classmethod
        def guess_can_open(cls, spec: str) -> bool:
            return spec.startswith(prefix)

        def __init__(self, spec: str) -> None:
            super().__init__(spec.removeprefix(prefix) or ".")

    Family.name = name  # type: ignore[misc]  # a ClassVar set per test family
    return Family


def _install(site: Path, dist: str, lines: str, module: str = "", code: str = "") -> None:
    """What ``pip install`` leaves in site-packages: a module and its dist-info."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[flq_audit.sources]\n{lines}\n")
    if module:
        (site / f"{module}.py").write_text(code)


def test_built_ins_come_first_and_new_families_after_them():
    first = register_source(_family("first"))
    second = register_source(_family("second"))
    assert list(source_families()) == ["local", "hub", "first", "second"]
    assert source_families()["second"] is second and source_families()["first"] is first


def test_before_puts_a_family_ahead_of_a_built_in(tmp_path):
    register_source(_family("late", claims=str(tmp_path)))
    early = register_source(_family("early", claims=str(tmp_path)), before="local")
    assert list(source_families()) == ["early", "local", "hub", "late"]
    assert type(open_source(str(tmp_path))) is early  # local claims the folder too


def test_register_source_is_a_decorator_with_or_without_arguments():
    @register_source(before="hub")
    class Between(_family("between")):
        name: ClassVar[str] = "between"

    assert list(source_families())[:3] == ["local", "between", "hub"]
    assert register_source(Between) is Between  # again: moved to the end, not duplicated
    assert list(source_families()) == ["local", "hub", "between"]


def test_bad_registrations_name_what_is_wrong():
    with pytest.raises(SourceError, match="no other family is named 'nowhere'; registered: "
                                          "local, hub"):
        register_source(_family("x"), before="nowhere")
    with pytest.raises(SourceError, match="'local' is already registered"):
        register_source(_family("local"))
    with pytest.raises(SourceError, match="is not a checkpoint source family"):
        register_source(object)  # type: ignore[arg-type]
    assert list(source_families()) == ["local", "hub"]


def test_entry_points_are_read_once_at_the_first_resolution(tmp_path, monkeypatch):
    site = tmp_path / "site"
    code = ("from flq_audit.sources import LocalFolderSource\n"
            "class Dotted(LocalFolderSource):\n"
            "    name = 'dotted'\n"
            "    before = 'local'\n"
            "    @classmethod\n"
            "    def guess_can_open(cls, spec):\n"
            "        return spec.endswith('.dotted')\n")
    _install(site, "flq_dotted", "dotted = flq_dotted_source:Dotted", "flq_dotted_source", code)
    monkeypatch.syspath_prepend(str(site))
    assert "dotted" not in sources.SOURCE_FAMILIES  # nothing read at import
    folder = tmp_path / "run.dotted"
    folder.mkdir()
    assert type(open_source(str(folder))).name == "dotted"
    assert list(sources.SOURCE_FAMILIES) == ["dotted", "local", "hub"]
    (site / "flq_dotted_source.py").unlink()  # read once: no second import
    assert type(open_source(str(folder))).name == "dotted"


def test_a_broken_entry_point_names_its_distribution(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _install(site, "flq_broken", "broken = flq_missing_module:Source")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(SourceError) as caught:
        open_source(str(tmp_path))
    message = str(caught.value)
    assert "source plugin 'broken' (flq_missing_module:Source)" in message
    assert "distribution flq_broken 0.1" in message
    assert "ModuleNotFoundError: No module named 'flq_missing_module'" in message
    assert "Fix or uninstall flq_broken 0.1" in message


def test_an_entry_point_that_is_no_source_class_is_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _install(site, "flq_odd", "odd = flq_odd_module:VALUE", "flq_odd_module", "VALUE = 3\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(SourceError, match=r"'odd' \(flq_odd_module:VALUE\) of the distribution "
                                          r"flq_odd 0.1 .*is not a checkpoint source family"):
        open_source(str(tmp_path))
