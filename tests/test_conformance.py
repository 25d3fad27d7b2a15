"""The conformance suite over every tiny config of every registered mechanism (registering is what gets tested)."""
import pytest

from dynsearch.dynamic import MECHANISMS
from dynsearch.testing.conformance import CHECKS, cases

CASES = list(cases())


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
@pytest.mark.parametrize("config", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_conformance(config, check):
    check(config)


def test_every_mechanism_is_covered():
    covered = {config["mechanism"] for _, config in CASES}
    assert covered == set(MECHANISMS)
    assert {"exits", "gates"} <= {m.family for m in MECHANISMS.values()}
