"""`row_to_dict`: the compiled row -> dict conversion the SQLite online store reads with."""

from __future__ import annotations

import pytest

from shared.feature_definitions import DEPARTURE_EVENTS
from shared.feature_store.online_codec import row_to_dict


def test_row_to_dict_equals_the_zip_of_columns_and_values() -> None:
    columns = tuple(DEPARTURE_EVENTS.columns)
    row = (7, *range(len(columns)))  # a lookup number, then the columns' values
    assert row_to_dict(columns, skip=1)(row) == dict(zip(columns, row[1:], strict=True))
    assert row_to_dict(columns)(row[1:]) == dict(zip(columns, row[1:], strict=True))


def test_row_to_dict_writes_names_as_literals_never_as_code() -> None:
    columns = ("a'b", 'c"d', "__import__('os')", "e\\nf")
    assert row_to_dict(columns)((1, 2, 3, 4)) == dict(zip(columns, (1, 2, 3, 4), strict=True))
    with pytest.raises(TypeError, match="must be strings"):
        row_to_dict((1, "b"))  # type: ignore[arg-type]
