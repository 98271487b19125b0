"""The README's table of ErrorInfo reasons lists every reason meshlet can put on a status, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from meshlet.errors import ErrorReason

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_has_one_row_per_error_reason() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split("## Errors: what each reason means", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE)
    assert sorted(rows) == sorted(reason.value for reason in ErrorReason)
    assert len(rows) == len(set(rows))
