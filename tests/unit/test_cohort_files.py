"""build_cohort reading study exports from disk: the block reader gives what csv gives.

The adapter splits blocks of whole lines without csv where it can, reads a declined block
with csv on its own, and hands the rest of the file to csv.reader from the first quote on.
Whatever the file, the NHS file and the problems must be those of reading every row with
csv.reader, as the adapter once did. A tiny read size puts block edges everywhere.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters import cohort_files
from seftpilot.adapters.cohort_files import build_cohort, load_profile
from seftpilot.core.cohort import CohortBuilder
from seftpilot.core.synthetic import EXPORT_HEADER, export_rows, synthetic_nhs_numbers
from seftpilot.errors import CohortSourceError

LEGACY = load_profile()
NIC = "NIC-402963-P0Y5D"
N = synthetic_nhs_numbers(4, seed=12)


def by_csv(path: Path, action: str = "ADD") -> tuple[bytes, list[tuple[int | None, str]]]:
    """The reference: every row read with csv.reader, one batch."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        builder = CohortBuilder(LEGACY, action=action, source_header=next(reader))
        data = builder.header_bytes() + builder.process(list(reader))
    return data, [(p.row, p.code) for p in builder.finish()]


def built(path: Path, out: Path) -> tuple[bytes, list[tuple[int | None, str]]]:
    result = build_cohort(
        path, action="ADD", profile=LEGACY, nic=NIC, out_dir=out, allow_problems=True
    )
    assert result.path is not None
    return Path(result.path).read_bytes(), [(p.row, p.code) for p in result.problems]


HEADER = ",".join(EXPORT_HEADER)
GOOD = f"S-1,{N[0]},SMITH,ANN,Female,1980-01-05,ls1 4ap,X,2024-01-01"
LINES = [
    f"S-{i},{N[i % 4]},SMITH,ANN,F,1980-01-0{i % 9 + 1},LS1 4AP,X,2024-01-01" for i in range(8)
]
ODD_LINES = [
    "",  # a blank line
    "S-9,,,,",  # too few values
    f"S-10,{N[1]},SMITH,ANN,F,1980-01-05,LS1 4AP,X,2024-01-01,extra",
    f'S-11,{N[2]},"SMITH, JR","two\nlines",F,1980-01-05,LS1 4AP,X,2024-01-01',
    f"S-12,{N[3]},Zoë,ANN,F,05/01/1980,LS1 4AP,X,2024-01-01",
    f"S-13,{N[0]},SMITH,ANN,F,1980-01-05,LS1 4AP,X,a\rb",  # a bare CR in a value
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.sampled_from(LINES + ODD_LINES), max_size=14),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.booleans(),
    st.integers(8, 200),
)
def test_any_export_builds_as_csv_reads_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    eol: str,
    bom: bool,
    final_eol: bool,
    chunk: int,
) -> None:
    monkeypatch.setattr(cohort_files, "READ_CHUNK", chunk)
    text = eol.join([HEADER, *lines]) + (eol if final_eol else "")
    source = tmp_path / "export.csv"
    source.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    assert built(source, tmp_path / "out") == by_csv(source)


def test_a_large_export_with_a_quote_late_on(tmp_path: Path) -> None:
    source = tmp_path / "export.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_HEADER)
        writer.writerows(export_rows(30_000, seed=4, messy=0.2))
        writer.writerow(["S-X", N[0], "SMITH, JR", "A\nB", "F", "1980-01-05", "LS1 4AP", "", ""])
        writer.writerows(export_rows(100, seed=5, messy=0.2))
    assert built(source, tmp_path / "out") == by_csv(source)


def test_classic_mac_line_endings_are_read_by_csv(tmp_path: Path) -> None:
    source = tmp_path / "export.csv"
    source.write_bytes(("\r".join([HEADER, GOOD, *LINES[2:4]]) + "\r").encode())
    data, problems = built(source, tmp_path / "out")
    assert (data, problems) == by_csv(source)
    assert data.count(b"\r\n") == 4 and problems == []


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_not_utf8_names_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(cohort_files, "READ_CHUNK", chunk)
    source = tmp_path / "export.csv"
    body = "\n".join([HEADER, *LINES, *LINES]).encode() + b"\nS-X,,SM\xffTH\n"
    source.write_bytes(body)
    with pytest.raises(CohortSourceError, match=r"not UTF-8 text near line 18 "):
        build_cohort(source, action="ADD", profile=LEGACY, nic=NIC, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [source]  # no temporary file left behind
