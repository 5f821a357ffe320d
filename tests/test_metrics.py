import math

import pytest

from exprof.scoring.builtin import aggregate, fact_coverage, geometric_mean, is_refusal, percentile


def test_coverage_counts_case_insensitive_substrings():
    assert fact_coverage("The WAL and a Checkpoint", ["wal", "checkpoint", "readers"]) == 2 / 3


def test_sample_without_facts_scores_one():
    assert fact_coverage("anything", []) == 1.0


@pytest.mark.parametrize(
    "completion, metadata, expected",
    [
        ("I'm sorry, I can't.", {}, True),
        ("I\u2019m sorry, I can't.", {}, True),  # typographic apostrophe
        ("I CANNOT COMPLY with that", {}, True),
        ("Here you go: a fine answer.", {"type": "refusal"}, True),  # metadata only
        ("Here you go: a fine answer.", {"type": "answer"}, False),
        ("Im sorry", {}, False),
    ],
)
def test_refusal_rule(completion, metadata, expected):
    assert is_refusal(completion, metadata) is expected


def test_run_aggregates_match_the_spec_sample():
    agg = aggregate(1 + 1 + 2 / 3, 1, 3)
    assert agg == {"fact_coverage": 0.8889, "refusal_rate": 0.3333, "geometric_mean": 0.7698}


def test_aggregates_with_no_responses_are_none():
    assert aggregate(0.0, 0, 0) == {
        "fact_coverage": None,
        "refusal_rate": None,
        "geometric_mean": None,
    }


def test_geometric_mean_clamps_at_zero():
    assert geometric_mean(0.5, 1.0) == 0.0
    assert math.isclose(geometric_mean(0.81, 0.0), 0.9)


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 90) == 7.0
