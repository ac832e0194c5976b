"""The shared judge contract (``deepprune_lc.testing.JudgeConformanceTests``) on the judges that ship
in the core, on the chat model's tracing wrapper and on the fake judges, plus what the fakes
themselves promise."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest

from deepprune_lc.core.ports import Judge, JudgeScores, PrefixPair
from deepprune_lc.judges import ConstantJudge, LexicalJudge, RandomJudge
from deepprune_lc.testing import FailingJudge, JudgeConformanceTests, ScriptedJudge, SlowJudge


class TestLexicalJudgeConformance(JudgeConformanceTests):
    @pytest.fixture
    def judge(self) -> LexicalJudge:
        return LexicalJudge()


class TestConstantJudgeConformance(JudgeConformanceTests):
    @pytest.fixture(params=[0.0, 0.5, 1.0])
    def judge(self, request: pytest.FixtureRequest) -> ConstantJudge:
        return ConstantJudge(request.param)


class TestConstantJudgeWithPrefillConformance(JudgeConformanceTests):
    """A constant judge that reports a per-pair reading cost stands in for a model judge."""

    @pytest.fixture
    def judge(self) -> ConstantJudge:
        return ConstantJudge(0.5, prefill_tokens_per_pair=10)

    @property
    def runs_a_model(self) -> bool:
        return True


class TestRandomJudgeConformance(JudgeConformanceTests):
    """The baseline that knows nothing keeps the whole contract: a score is a function of the pair."""

    @pytest.fixture
    def judge(self) -> RandomJudge:
        return RandomJudge(seed=0)


class TestScriptedJudgeConformance(JudgeConformanceTests):
    @pytest.fixture
    def judge(self) -> ScriptedJudge:
        return ScriptedJudge(lambda pair: 1.0 if pair.prefix_a == pair.prefix_b else 0.25)


class TestSlowJudgeConformance(JudgeConformanceTests):
    @pytest.fixture
    def judge(self) -> SlowJudge:
        return SlowJudge(0.001, LexicalJudge())


class TestTracedJudgeConformance(JudgeConformanceTests):
    """The wrapper every judge of the chat model goes through (its calls become child runs)."""

    @pytest.fixture
    def judge(self) -> Judge:
        from langchain_core.callbacks import AsyncCallbackManager

        from deepprune_lc.langchain.callbacks import TracedJudge

        return TracedJudge(LexicalJudge(), AsyncCallbackManager(handlers=[]), "lexical")


# -- the suite catches broken judges ----------------------------------------------------------------


class _Broken:
    """A judge that breaks one rule of the contract."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.calls = 0

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        self.calls += 1
        probabilities = [0.5] * len(pairs)
        if self.rule == "short" and pairs:
            probabilities = probabilities[:-1]
        elif self.rule == "nan" and pairs:
            probabilities[0] = math.nan
        elif self.rule == "position":  # a pair's score depends on where it sits in the batch
            probabilities = [i / max(1, len(pairs)) for i in range(len(pairs))]
        elif self.rule == "drifting":
            probabilities = [min(1.0, 0.1 * self.calls)] * len(pairs)
        return JudgeScores(probabilities, prefill_tokens=0)


@pytest.mark.parametrize(
    ("rule", "test"),
    [
        ("short", "test_one_probability_in_the_unit_interval_per_pair"),
        ("nan", "test_one_probability_in_the_unit_interval_per_pair"),
        ("position", "test_a_pair_scores_alike_alone_and_anywhere_in_a_batch"),
        ("drifting", "test_the_same_input_gets_the_same_answer"),
    ],
)
async def test_the_suite_fails_a_judge_that_breaks_the_contract(rule: str, test: str) -> None:
    suite = TestLexicalJudgeConformance()
    with pytest.raises(AssertionError):
        await getattr(suite, test)(_Broken(rule))


async def test_the_suite_fails_a_model_judge_that_reports_no_cost() -> None:
    suite = TestConstantJudgeWithPrefillConformance()
    with pytest.raises(AssertionError):
        await suite.test_prefill_tokens_say_whether_a_model_read_the_pairs(ConstantJudge(0.5))


# -- the fakes --------------------------------------------------------------------------------------

PAIRS = [PrefixPair(0, 1, "a", "b"), PrefixPair(2, 1, "c", "d")]


async def test_constant_judge_counts_and_validates() -> None:
    judge = ConstantJudge(1.0, prefill_tokens_per_pair=3)
    scores = await judge.score(PAIRS)
    assert list(scores.probabilities) == [1.0, 1.0] and scores.prefill_tokens == 6
    assert (judge.calls, judge.pairs_scored) == (1, 2)
    assert isinstance(judge, Judge)
    assert repr(judge) == "ConstantJudge(1.0, prefill_tokens_per_pair=3)"
    for bad in (-0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match="probability"):
            ConstantJudge(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefill_tokens_per_pair"):
        ConstantJudge(0.5, prefill_tokens_per_pair=-1)


async def test_scripted_judge_by_table_records_batches() -> None:
    judge = ScriptedJudge({(0, 1): 0.9, (1, 2): 0.2}, prefill_tokens_per_pair=1)
    scores = await judge.score(PAIRS)
    assert list(scores.probabilities) == [0.9, 0.2]  # (2, 1) found as (1, 2)
    assert scores.prefill_tokens == 2
    assert judge.batches == [PAIRS] and judge.calls == 1
    with pytest.raises(KeyError, match="traces 3, 4"):
        await judge.score([PrefixPair(3, 4, "e", "f")])
    defaulted = ScriptedJudge({}, default=0.4)
    assert list((await defaulted.score(PAIRS)).probabilities) == [0.4, 0.4]


async def test_failing_judge_fails_after_the_answered_calls() -> None:
    judge = FailingJudge()
    with pytest.raises(RuntimeError, match="unreachable"):
        await judge.score(PAIRS)
    later = FailingJudge(TimeoutError("judge timed out"), after=2, inner=ConstantJudge(0.3))
    for _ in range(2):
        assert list((await later.score(PAIRS)).probabilities) == [0.3, 0.3]
    with pytest.raises(TimeoutError, match="timed out"):
        await later.score(PAIRS)
    assert later.calls == 3
    with pytest.raises(ValueError, match="inner"):
        FailingJudge(after=1)


async def test_slow_judge_is_in_flight_until_its_delay_passes() -> None:
    judge = SlowJudge(60.0)
    call = asyncio.ensure_future(judge.score(PAIRS))
    await asyncio.sleep(0)
    assert judge.in_flight == 1 and not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert judge.in_flight == 0
    quick = SlowJudge(0.0, ConstantJudge(0.8))
    assert list((await quick.score(PAIRS)).probabilities) == [0.8, 0.8]
