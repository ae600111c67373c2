import pytest

from trainer.guard import halve_micro_batch, merge_line_ranges


@pytest.mark.parametrize(
    ("micro", "accum", "expected"),
    [
        (8, 1, (4, 2)),
        (4, 2, (2, 4)),
        (2, 4, (1, 8)),
        (6, 1, (3, 2)),
        (3, 2, (1, 6)),
        (7, 3, (1, 21)),
    ],
)
def test_halving_keeps_the_effective_batch(micro, accum, expected):
    assert halve_micro_batch(micro, accum) == expected
    assert expected[0] * expected[1] == micro * accum


def test_cannot_halve_one():
    with pytest.raises(ValueError):
        halve_micro_batch(1, 4)


def test_merge_line_ranges():
    assert merge_line_ranges([(6, 9), (3, 5), (12, 12)]) == "3-9, 12"
    assert merge_line_ranges([(1, 1)]) == "1"
    assert merge_line_ranges([]) == ""
