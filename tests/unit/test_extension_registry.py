"""The registry behind ``--extension NAME``: names, built-ins, entry points imported only
when named, and the option that carries the names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest

from flq_audit.audit import extensions
from flq_audit.audit.extensions import (
    Extension,
    extension_names,
    named_extensions,
    register_extension,
)
from flq_audit.errors import OptionError
from flq_audit.options import CaptureOptions


class Counts(Extension):
    name: ClassVar[str] = "counts"


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    monkeypatch.setattr(extensions, "_REGISTRY", dict(extensions._REGISTRY))
    monkeypatch.setattr(extensions, "_ENTRY_POINTS", None)


def _install(site: Path, lines: str, module: str = "", code: str = "") -> None:
    info = site / "flq_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flq_plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[flq_audit.extensions]\n{lines}\n")
    if module:
        (site / f"{module}.py").write_text(code)


def test_a_registered_extension_is_made_anew_by_name():
    assert register_extension(Counts) is Counts
    first, second = named_extensions(["counts"]), named_extensions(["counts"])
    assert isinstance(first[0], Counts) and first[0] is not second[0]
    assert "counts" in extension_names()


def test_names_that_cannot_be_registered_or_enabled():
    register_extension(Counts)
    with pytest.raises(OptionError, match="'counts' is already registered"):
        register_extension(type("Other", (Counts,), {}))
    with pytest.raises(OptionError, match="'fl' is built in"):
        register_extension(Counts, name="fl")
    with pytest.raises(OptionError, match=r"\['counts'\] given more than once"):
        named_extensions(["counts", "counts"])
    with pytest.raises(OptionError, match="'hidden_states' is built in, switched on by "
                                          "--hidden-states"):
        named_extensions(["hidden_states"])
    with pytest.raises(OptionError, match="no such extension; available: counts"):
        named_extensions(["nope"])


def test_a_factory_must_make_the_extension_it_is_named_for():
    register_extension(lambda: Counts(), name="tally")
    with pytest.raises(OptionError, match="not a per-step extension named 'tally'"):
        named_extensions(["tally"])


def test_entry_points_are_imported_only_when_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _install(site, "broken = flq_gone:Broken\ngood = flq_good_ext:Good", "flq_good_ext",
             "from flq_audit.audit.extensions import Extension\n"
             "class Good(Extension):\n    name = 'good'\n")
    monkeypatch.syspath_prepend(str(site))
    assert extension_names() == ["broken", "good"]
    (made,) = named_extensions(["good"])  # the broken one is never imported
    assert type(made).__name__ == "Good"
    with pytest.raises(OptionError, match=re.escape(
            "the entry point broken = flq_gone:Broken of the distribution flq_plugins 0.1 "
            "could not be loaded: ModuleNotFoundError")):
        named_extensions(["broken"])


def test_the_option_takes_one_name_or_several():
    assert CaptureOptions(extensions="counts").extensions == ("counts",)
    assert CaptureOptions(extensions=["a", "b"]).extensions == ("a", "b")
    assert CaptureOptions().extensions == ()
