"""Sizes and one-line messages, as every command shows them."""

from __future__ import annotations

import pytest

from flq_audit._format import human_size, one_line


@pytest.mark.parametrize(("n_bytes", "text"), [
    (0, "0 bytes"), (999, "999 bytes"), (1_234, "1.2 kB"), (62_896 * 1024, "64.4 MB"),
    (5 * 10**12, "5.0 TB"),
])
def test_human_size_uses_the_unit_that_reads_best(n_bytes, text):
    assert human_size(n_bytes) == text


def test_one_line_runs_a_colon_into_its_list_and_separates_the_rest():
    message = "store 'x' was made by a different audit:\n  steps: a\n  probe: b\nChoose another --out."
    assert one_line(message) == ("store 'x' was made by a different audit: steps: a; probe: b; "
                                 "Choose another --out.")
    assert one_line("single") == "single"
