"""Fuzzing in CI: 2 000 mutated model files, 1 000 mutated images and 10 000 mutated bitstreams, fixed seeds.

Each case (see :mod:`fuzzing` for the mutations) must load as a valid result
or fail with the documented error (``ModelFileError`` / ``ImageError``, one
line naming the file); cases run in worker subprocesses under an address-space
cap and a per-case time limit, so a bomb or a hang fails the case instead of
the test run.  Before a release run the long campaign::

    SMOE_FUZZ_CASES=20000 SMOE_FUZZ_IMAGES=5000 python tests/fuzzing.py campaign
"""

import pytest

import fuzzing


@pytest.mark.parametrize("kind,cases", [("model", 2000), ("image", 1000), ("bitstream", 10_000)])
def test_mutated_files_give_a_valid_result_or_the_documented_error(kind, cases):
    summary = fuzzing.run(kind, cases, first=1_000_000)
    assert summary["cases"] == cases
    assert summary["failure"] == 0, summary["failures"][:10]
    assert summary["valid"] > 0 and summary["clean"] > cases // 2  # the mutations reach both outcomes
