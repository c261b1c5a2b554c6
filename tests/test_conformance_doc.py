"""``docs/conformance.md`` checked against the specification texts and the test suite.

The document has one table per specification ("## MQTT 5.0", "## MQTT 3.1.1") with a row per
normative label: ``| Label | Statement | Binds the server? | Proof or reason |``. A row binding
the server is proven by tests named ``tests/file.py::test_name``, or says "Not yet tested"; a
row not binding the server gives the reason (and may name tests showing that the broker
enforces a client obligation). Every test named must exist and cite the row's label, for the
row's version, in its docstring, as ``tests.spec.cited`` reads it. The summary table at the top
must count the rows.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

import pytest

from tests.spec import LABELS, V5, V311, check_cited_labels, cited

DOC = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
VERSIONS = {"5.0": False, "3.1.1": True}  # table name -> is_v311, as in ``cited``
SPECS = {"5.0": V5, "3.1.1": V311}
TEST_REF = re.compile(r"`(tests/[\w/]+)\.py::(\w+)(?:\[[^\]`]*\])?`")
NOT_YET = "Not yet tested"
MAX_WORDS = 12


class Row(NamedTuple):
    label: str
    statement: str
    binds: str
    proof: str

    @property
    def tests(self) -> List[Tuple[str, str]]:
        """The tests the row names: (module path without ``.py``, function name)."""
        return TEST_REF.findall(self.proof)

    @property
    def category(self) -> str:
        if self.binds == "No":
            return "no"
        return "untested" if self.proof.startswith(NOT_YET) else "tested"


def _cells(line: str) -> List[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _sections() -> Dict[str, List[str]]:
    """The document's lines by "## " heading."""
    sections: Dict[str, List[str]] = {}
    current = ""
    for line in DOC.read_text("utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            assert current not in sections, f"heading {current!r} twice"
            sections[current] = []
        elif current:
            sections[current].append(line)
    return sections


def _rows(version: str) -> List[Row]:
    lines = _sections()[f"MQTT {version}"]
    rows = []
    for line in lines:
        if line.startswith("| MQTT-"):
            cells = _cells(line)
            assert len(cells) == 4, line
            rows.append(Row(*cells))
    return rows


def _summary() -> Dict[str, Dict[str, int]]:
    counts = {}
    for line in _sections()["Summary"]:
        if line.startswith("| MQTT "):
            name, total, tested, untested, no = _cells(line)
            counts[name[len("MQTT "):]] = {"total": int(total), "tested": int(tested),
                                           "untested": int(untested), "no": int(no)}
    return counts


def _order(label: str) -> Tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", label))


def _cites(doc: str, label: str, v311: bool) -> bool:
    """Whether ``doc`` cites ``label`` of the given version.  A label that ``cited`` cannot
    read (3.1.1 spells one "MQTT-3.1.2.7") must appear literally, with "(3.1.1)" if so."""
    if (label, v311) in cited(doc):
        return True
    marked = f"{label} (3.1.1)" if v311 else label
    readable = cited(marked) == [(label, v311)]
    return not readable and marked in " ".join(doc.split())


versions = pytest.mark.parametrize("version", list(VERSIONS))


@versions
def test_every_label_once_in_label_order(version: str) -> None:
    """Each table holds every label of its specification exactly once, no other, in label
    order: the odd spellings of 3.1.1 included [MQTT-3-8.3-4 (3.1.1), MQTT-3.1.2.7 (3.1.1)], and
    both labels 5.0 gives one statement [MQTT-4.2-1, MQTT-4.2.0-1]."""
    labels = [row.label for row in _rows(version)]
    expected = {r["label"] for r in SPECS[version]["requirements"]}
    assert expected == LABELS[VERSIONS[version]]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    assert duplicates == []
    assert sorted(set(labels) - expected) == []
    assert sorted(expected - set(labels)) == []
    assert labels == sorted(labels, key=_order)


@versions
def test_rows_are_well_formed(version: str) -> None:
    """A row says Yes or No; a Yes row names the tests proving it (as the row of
    [MQTT-3.1.2-28] does) or starts "Not yet tested" and then names none; a statement is
    paraphrased in at most 12 words."""
    for row in _rows(version):
        assert row.binds in ("Yes", "No"), row
        assert row.statement and len(row.statement.split()) <= MAX_WORDS, row
        assert row.proof, row
        if row.category == "tested":
            assert row.tests, row
        elif row.category == "untested":
            assert row.tests == [], row


@versions
def test_cited_tests_exist_and_cite_the_label(version: str) -> None:
    """Every ``tests/...py::test_name`` named in a row exists (a parametrized test by its
    function name) and its docstring cites the row's label for the table's version, so that
    the proof of, say, [MQTT-4.13.1-1] or [MQTT-4.8.0-1 (3.1.1)] is a citation in the test."""
    v311 = VERSIONS[version]
    problems = []
    for row in _rows(version):
        for path, name in row.tests:
            module = importlib.import_module(path.replace("/", "."))
            function = getattr(module, name, None)
            if function is None or not name.startswith("test_"):
                problems.append(f"{row.label}: {path}.py::{name} does not exist")
            elif not _cites(function.__doc__ or "", row.label, v311):
                problems.append(f"{row.label}: {path}.py::{name} does not cite it")
    assert problems == []


@versions
def test_summary_counts_match_the_rows(version: str) -> None:
    """The summary's counts are those of the table: statements binding the server and tested
    (like [MQTT-3.1.0-2]), binding it and not yet tested, and not binding it (like
    [MQTT-3.1.0-1], a client obligation)."""
    rows = _rows(version)
    counted = {"total": len(rows), "tested": 0, "untested": 0, "no": 0}
    for row in rows:
        counted[row.category] += 1
    assert _summary()[version] == counted


def test_cited_labels() -> None:
    """Every test of this module cites a label, and every label cited exists."""
    check_cited_labels(sys.modules[__name__], every_test=True)
