"""Text-free trace pools (tokens + final answer + answer probes), their replay in chunks, the
latency clock, and clustering by answer probes (``ProbeJudge``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepprune_lc import DeepPruneReasoner
from deepprune_lc.backends.pool import PoolProblem, TracePool, TracePoolError, load_trace_pool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import (
    ProbeClustering,
    PruningConfig,
    SamplingConfig,
    TokensPrefix,
    VoteSettling,
)
from deepprune_lc.core.controllers import ClusterTrace, DeepPruneController, ProbeTrace, StartTrace
from deepprune_lc.core.monitors import ProbeDue
from deepprune_lc.core.ports import AnswerProbing, PrefixPair, TraceDelta, TraceRequest
from deepprune_lc.core.specs import SpecError, parse_spec
from deepprune_lc.judges import ConstantJudge, ProbeJudge
from deepprune_lc.runtime.factories import probe_judge
from deepprune_lc.runtime.runner import DeepPrune, SelfConsistency
from deepprune_lc.testing import JudgeConformanceTests

QUESTION = "How many minutes does the walk take?"


def _trace(tokens: int, final: str, probes: Sequence[str] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"tokens": tokens, "final_answer": final}
    if probes is not None:
        record["probes"] = list(probes)
    return record


def _pool(traces: list[dict[str, Any]], every: int | None = 100) -> TracePool:
    data: dict[str, Any] = {"id": "q", "problem": QUESTION, "answer": "204", "traces": traces}
    if every is not None:
        data["probe_every_tokens"] = every
    return TracePool(problems=[PoolProblem.model_validate(data)])


async def _collect(backend: ReplayBackend, request: TraceRequest) -> list[TraceDelta]:
    return [delta async for delta in backend.stream(request)]


def _request(
    rid: str = "r", index: int = 0, resume: tuple[int, ...] = (), **sampling: Any
) -> TraceRequest:
    return TraceRequest(rid, index, QUESTION, SamplingConfig(**sampling), 0, resume)


# ---------------------------------------------------------------- pool format


def test_a_text_free_pool_loads_and_writes_back_unchanged(tmp_path: Path) -> None:
    line = {
        "id": "q",
        "problem": QUESTION,
        "answer": "204",
        "probe_every_tokens": 500,
        "source_model": "m",
        "traces": [_trace(1200, "204", ["150", "ERR"])],
    }
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(line) + "\n")
    pool = load_trace_pool(source)
    problem = pool.by_id("q")
    assert problem.text_free and problem.has_probes and problem.probe_every_tokens == 500
    out = tmp_path / "out.jsonl"
    pool.write_jsonl(out)
    assert json.loads(out.read_text()) == line


@pytest.mark.parametrize(
    ("traces", "every", "expected"),
    [
        ([{"tokens": 10}], 5, "traces.0.final_answer: Field required"),
        ([{"final_answer": "1"}], 5, "traces.0.tokens: Field required"),
        ([{"text": "a", "tokens": 3, "final_answer": "1"}], 5, "traces.0.text: a trace is"),
        ([_trace(10, "1", ["1"])], None, "probe_every_tokens: traces.0 records probes"),
        ([_trace(10, "1"), {"text": "a"}], 5, "traces.1: the problem mixes text traces"),
        ([_trace(0, "1")], 5, "traces.0.tokens: Input should be greater than or equal to 1"),
        (
            [{"tokens": 10, "final_answer": "1", "probes": [3]}],
            5,
            "traces.0.probes.0: Input should be a valid string",
        ),
    ],
)
def test_a_malformed_text_free_line_names_file_line_and_field(
    tmp_path: Path, traces: list[dict[str, Any]], every: int | None, expected: str
) -> None:
    good = {"id": "a", "problem": "P", "traces": [{"text": "t"}]}
    bad: dict[str, Any] = {"id": "b", "problem": "Q", "traces": traces}
    if every is not None:
        bad["probe_every_tokens"] = every
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TracePoolError) as info:
        load_trace_pool(path)
    assert str(info.value).startswith(f"{path}:2: "), str(info.value)
    assert expected in str(info.value)


def test_the_recorded_probe_pool_loads() -> None:
    path = Path(__file__).parents[2] / "../shared/data/probes/qwen3_8b_aime24_probe128.jsonl"
    if not path.is_file():
        pytest.skip("the shared probe pool is not beside the project")
    pool = load_trace_pool(path)
    assert len(pool) == 30 and all(len(p.traces) == 128 and p.has_probes for p in pool)


# ---------------------------------------------------------------- replay in chunks


async def test_a_text_free_trace_plays_in_chunks_with_its_answer_at_the_end() -> None:
    backend = ReplayBackend(_pool([_trace(250, "204")]), chunk_tokens=100)
    deltas = await _collect(backend, _request())
    assert [len(d.token_ids) for d in deltas] == [100, 100, 50]
    assert [i for d in deltas for i in d.token_ids] == list(range(1, 251))
    assert [d.text for d in deltas] == ["", "", "\\boxed{204}"]
    assert [d.finish_reason for d in deltas] == [None, None, "stop"]
    assert AnswerRules.math().extract("".join(d.text for d in deltas)) == "204"


async def test_a_trace_without_a_final_answer_ends_with_no_text() -> None:
    backend = ReplayBackend(_pool([_trace(50, "ERR")]))
    deltas = await _collect(backend, _request())
    assert "".join(d.text for d in deltas) == "" and deltas[-1].finish_reason == "stop"


async def test_no_token_budget_cuts_a_recorded_trace_unless_the_caller_set_one() -> None:
    backend = ReplayBackend(_pool([_trace(5000, "204")]), chunk_tokens=1000)
    whole = await _collect(backend, _request())  # SamplingConfig's default is 2048
    assert sum(len(d.token_ids) for d in whole) == 5000 and whole[-1].finish_reason == "stop"
    cut = await _collect(backend, _request("c", max_tokens=2048))
    assert sum(len(d.token_ids) for d in cut) == 2048
    assert cut[-1].finish_reason == "length" and "".join(d.text for d in cut) == ""


async def test_text_pools_also_play_to_the_end_unless_a_budget_was_set() -> None:
    backend = ReplayBackend.synthetic(1, 3000)
    request = TraceRequest("t", 0, "synthetic", SamplingConfig(), 0)
    deltas = [d async for d in backend.stream(request)]
    assert len(deltas) == len(backend.trace_token_ids("synthetic", 0)) > 2048


async def test_abort_mid_run_keeps_exactly_the_chunks_delivered_and_resume_is_exact() -> None:
    backend = ReplayBackend(_pool([_trace(1000, "204")]), chunk_tokens=100)
    got: list[int] = []
    async for delta in backend.stream(_request("a")):
        got.extend(delta.token_ids)
        if len(got) == 300:
            await backend.abort("a")
        if delta.finish_reason is not None:
            assert delta.finish_reason == "abort" and not delta.token_ids
    assert got == list(range(1, 301))
    rest = await _collect(backend, _request("b", resume=tuple(got)))
    assert [i for d in rest for i in d.token_ids] == list(range(301, 1001))
    with pytest.raises(ValueError, match="at position 2"):
        await _collect(backend, _request("c", resume=(1, 2, 9)))
    assert backend.live_requests() == set()


async def test_streams_advance_in_lockstep_one_chunk_per_turn() -> None:
    backend = ReplayBackend(_pool([_trace(300, "1"), _trace(300, "2")]), chunk_tokens=100)
    order: list[tuple[int, int]] = []

    async def run(index: int) -> None:
        done = 0
        async for delta in backend.stream(_request(f"r{index}", index)):
            done += len(delta.token_ids)
            order.append((index, done))

    await asyncio.gather(run(0), run(1))
    assert order == [(0, 100), (1, 100), (0, 200), (1, 200), (0, 300), (1, 300)]


async def test_probe_answers_with_the_recorded_probe_at_the_latest_offset() -> None:
    backend = ReplayBackend(_pool([_trace(450, "204", ["7", "ERR", "204"])]), chunk_tokens=50)
    assert isinstance(backend, AnswerProbing)
    replies = []
    async for delta in backend.stream(_request("p")):
        if delta.finish_reason is None:
            replies.append(await backend.probe("p"))
    at = [(r.at_tokens, r.answer, r.unknown) for r in replies]
    assert [r.observed_at for r in replies] == [None, 100, 100, 200, 200, 300, 300, 300]
    assert at[0] == (50, None, True)  # before the first offset
    assert at[1] == (100, "7", False) and at[2] == (150, "7", False)
    assert at[3] == (200, None, True)  # "ERR"
    assert at[5] == (300, "204", False) and at[-1] == (400, "204", False)  # the last one stands
    assert all(r.prefill_tokens == r.decoded_tokens == 0 for r in replies)
    with pytest.raises(KeyError):
        await backend.probe("p")  # ended


async def test_a_text_trace_cannot_be_probed() -> None:
    backend = ReplayBackend.synthetic(1, 40)
    stream = backend.stream(TraceRequest("t", 0, "synthetic", SamplingConfig(), 0))
    await stream.__anext__()
    with pytest.raises(ValueError, match="records no answer probes"):
        await backend.probe("t")
    await stream.aclose()


# ---------------------------------------------------------------- latency and budgets


def _answers_pool(
    lengths: Sequence[int], finals: Sequence[str], probes: Sequence[Sequence[str]]
) -> TracePool:
    return _pool([_trace(n, f, p) for n, f, p in zip(lengths, finals, probes, strict=True)])


async def test_latency_of_self_consistency_is_its_longest_trace() -> None:
    backend = ReplayBackend(_answers_pool([300, 900, 500], ["1", "1", "2"], [[]] * 3))
    result = await SelfConsistency(backend, 3).run(QUESTION)
    assert result.totals.latency_tokens == 900
    assert result.totals.decoded_tokens == 1700
    assert result.summary()["latency_tokens"] == 900


async def test_latency_stops_at_the_decision_and_a_resumed_trace_continues_from_its_step() -> None:
    # Every trace joins one cluster at 100 tokens (ConstantJudge(1)): the founder and one resumed
    # member finish. The resumed member is resumed at step ~100 and runs 900 more.
    lengths = [400, 1000, 2000, 2000]
    backend = ReplayBackend(_answers_pool(lengths, ["5"] * 4, [[]] * 4), chunk_tokens=100)
    config = PruningConfig(
        n_traces=4, finalists=2, prefix=TokensPrefix(k=100), settle=VoteSettling(min_margin=1)
    )
    result = await DeepPrune(backend, ConstantJudge(1.0), config).run(QUESTION)
    assert result.answer == "5"
    latency = result.totals.latency_tokens
    assert latency is not None
    finished = [t for t in result.traces if t.status == "finished"]
    assert len(finished) == 2 and result.traces[0].status == "finished"
    resumed = next(t for t in finished if t.resumed)
    # Resumed after its park at 100: its end is at (resume step) + (its length - 100).
    assert resumed.tokens_decoded - 100 + 100 <= latency <= resumed.tokens_decoded + 200
    assert latency < result.totals.decoded_tokens


async def test_traces_cut_by_a_budget_are_reported_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ReplayBackend(_answers_pool([300, 900], ["1", "1"], [[]] * 2))
    runner = SelfConsistency(backend, 2, sampling=SamplingConfig(max_tokens=500))
    with caplog.at_level(logging.WARNING):
        result = await runner.run(QUESTION)
    assert result.totals.length_capped == 1
    assert any("1 of 2 traces ended on the token budget" in r.message for r in caplog.records)


# ---------------------------------------------------------------- the probe judge


class TestProbeJudgeConformance(JudgeConformanceTests):
    @pytest.fixture(params=["separate", "together"])
    def judge(self, request: pytest.FixtureRequest) -> ProbeJudge:
        return ProbeJudge(ProbeClustering(unknown=request.param))


@pytest.mark.parametrize(
    ("unknown", "expected"),
    [("separate", [1.0, 0.0, 0.0, 0.0]), ("together", [1.0, 0.0, 0.0, 1.0])],
)
async def test_probe_judge_scores_answer_classes(unknown: str, expected: list[float]) -> None:
    judge = ProbeJudge(ProbeClustering(unknown=unknown))
    pairs = [
        PrefixPair(0, 1, "\\boxed{1/2}", "\\boxed{0.5}"),
        PrefixPair(0, 1, "\\boxed{3}", "\\boxed{4}"),
        PrefixPair(0, 1, "\\boxed{3}", "no answer"),
        PrefixPair(0, 1, "nothing", "no answer"),
    ]
    assert list((await judge.score(pairs)).probabilities) == expected


def test_the_probe_spec_builds_a_probe_judge_and_checks_its_options() -> None:
    judge = probe_judge(parse_spec("probe?at_tokens=1000&unknown=together"))
    assert judge.probe_clustering == ProbeClustering(at_tokens=1000, unknown="together")
    with pytest.raises(SpecError, match="at_tokens"):
        probe_judge(parse_spec("probe?at_tokens=0"))
    with pytest.raises(SpecError, match="no argument"):
        probe_judge(parse_spec("probe:x"))
    assert ProbeClustering().settle_on == "evidence"
    earlier = probe_judge(parse_spec("probe?settle_on=running"))
    assert earlier.probe_clustering.settle_on == "running"
    with pytest.raises(SpecError, match="settle_on"):
        probe_judge(parse_spec("probe?settle_on=never"))


async def test_the_probe_judge_clusters_with_no_pair_scored() -> None:
    finals = ["204", "204", "204", "150", "204", "204"]
    probes = [["3", "204"], ["3", "9"], ["ERR"], ["150"], ["3"], ["3"]]
    backend = ReplayBackend(_answers_pool([900, 800, 700, 600, 1000, 1100], finals, probes))
    config = PruningConfig(n_traces=6, finalists=2)
    judge = ProbeJudge(ProbeClustering(at_tokens=100, reprobe_every=None))
    result = await DeepPrune(backend, judge, config).run(QUESTION)
    assert result.totals.judge_calls == 0 and result.totals.probe_calls == 5
    # Probe classes at 100 tokens, in lockstep order: "3" (traces 0, 1, 4), unknown (2, alone),
    # "150" (3). After trace 4, 3 > 1 + 1 unclustered: the winner is certain, trace 5 is aborted.
    assert [c.members for c in result.clusters] == [[0, 1, 4], [2], [3]]
    assert result.traces[5].status == "aborted" and result.traces[5].cluster_id is None
    assert result.answer == "204"


async def test_unknown_probes_merge_only_when_asked() -> None:
    probes = [["ERR"], ["ERR"], ["ERR"], ["7"]]
    backend = ReplayBackend(_answers_pool([500] * 4, ["7"] * 4, probes), chunk_tokens=50)
    for unknown, largest in (("separate", 1), ("together", 3)):
        judge = ProbeJudge(ProbeClustering(at_tokens=100, unknown=unknown))
        result = await DeepPrune(backend, judge, PruningConfig(n_traces=4)).run(QUESTION)
        assert max(c.size for c in result.clusters) == largest, unknown
        assert result.answer == "7"


async def test_clustering_before_the_pools_first_recorded_probe_warns_with_the_fix(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probes recorded every 200 tokens: a clustering probe at 100 finds every trace unknown.
    # Said once per pool and offset (a bench runs every problem), so start from none said.
    monkeypatch.setattr("deepprune_lc.runtime.driver._GRID_WARNED", set())
    traces = [_trace(500, "7", ["7", "7"]) for _ in range(3)]
    backend = ReplayBackend(_pool(traces, every=200), chunk_tokens=50)
    with caplog.at_level(logging.WARNING, logger="deepprune_lc.runtime.driver"):
        early = ProbeJudge(ProbeClustering(at_tokens=100))
        await DeepPrune(backend, early, PruningConfig(n_traces=3)).run(QUESTION)
    warned = [r.getMessage() for r in caplog.records if "first probe at 200" in r.getMessage()]
    assert len(warned) == 1 and "probe?at_tokens=200" in warned[0], caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepprune_lc.runtime.driver"):
        await DeepPrune(backend, early, PruningConfig(n_traces=3)).run(QUESTION)
    assert "first probe" not in caplog.text  # once is enough
    with caplog.at_level(logging.WARNING, logger="deepprune_lc.runtime.driver"):
        aligned = ProbeJudge(ProbeClustering(at_tokens=200))
        result = await DeepPrune(backend, aligned, PruningConfig(n_traces=3)).run(QUESTION)
    assert "first probe" not in caplog.text
    assert len(result.clusters) == 1  # placed together by their probe "7", not as unknowns


async def test_probe_clustering_on_a_text_pool_is_refused_naming_the_pool() -> None:
    backend = ReplayBackend.synthetic(4, 60)
    with pytest.raises(ValueError, match="<synthetic> records no answer probes"):
        await DeepPrune(backend, ProbeJudge(), PruningConfig(n_traces=4)).run("synthetic")


def test_controller_places_by_probe_class_and_one_that_ended_first_by_its_answer() -> None:
    config = PruningConfig(n_traces=4, probe=ProbeClustering(at_tokens=100))
    ctl = DeepPruneController(config, AnswerRules.math())
    assert not ctl.needs_judge and ctl.needs_probes
    assert ctl.start() == [StartTrace(t) for t in range(4)]
    assert ctl.on_signal(0, ProbeDue(100)) == [ProbeTrace(0, 100)]
    assert ctl.on_probed(0, text="1/2} \\]")[0] == ClusterTrace(0, 0, True, None, 1)
    joined = ctl.on_probed(1, answer="0.5")  # equivalent under the math rules
    assert joined[0] == ClusterTrace(1, 0, False, 1.0, 2)
    founded = ctl.on_finished(2, "so \\boxed{3}", "stop")  # before its probe: its own answer
    assert ClusterTrace(2, 1, True, None, 1) in founded
    assert ctl.on_signal(0, ProbeDue(200)) == []  # clustered: no further probe


# ---------------------------------------------------------------- properties


@st.composite
def _probe_pools(draw: st.DrawFn) -> tuple[list[int], list[str], list[list[str]]]:
    n = draw(st.integers(2, 10))
    answers = st.sampled_from(["1", "2", "3", "ERR"])
    lengths = draw(st.lists(st.integers(1, 1200), min_size=n, max_size=n))
    finals = draw(st.lists(answers, min_size=n, max_size=n))
    probes = [
        draw(st.lists(answers, min_size=1, max_size=max(1, length // 100))) for length in lengths
    ]
    return lengths, finals, probes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=_probe_pools(),
    unknown=st.sampled_from(["separate", "together"]),
    finalists=st.integers(1, 4),
    reprobe=st.sampled_from([None, 100]),
    doubling=st.booleans(),
    count_committed=st.booleans(),
    settle_on=st.sampled_from(["evidence", "running"]),
)
def test_probe_runs_always_end_consistently(
    pool: tuple[list[int], list[str], list[list[str]]],
    unknown: str,
    finalists: int,
    reprobe: int | None,
    doubling: bool,
    count_committed: bool,
    settle_on: str,
) -> None:
    lengths, finals, probes = pool
    n = len(lengths)
    backend = ReplayBackend(_answers_pool(lengths, finals, probes), chunk_tokens=50)
    settings_ = ProbeClustering(
        at_tokens=100,
        unknown=unknown,
        reprobe_every=reprobe,
        count_committed=count_committed,
        settle_on=settle_on,
    )
    config = PruningConfig(
        n_traces=n, finalists=finalists, split_resume="doubling" if doubling else "needed"
    )
    result = asyncio.run(DeepPrune(backend, ProbeJudge(settings_), config).run(QUESTION))
    assert len(result.traces) == n
    assert {t.status for t in result.traces} <= {"finished", "pruned", "aborted"}
    assert result.totals.judge_calls == 0
    members = [m for c in result.clusters for m in c.members]
    assert len(members) == len(set(members)) and set(members) <= set(range(n))
    for report in result.traces:  # a trace outside every cluster was stopped unclustered
        assert (report.trace_id in members) == (report.cluster_id is not None)
    # Tokens add up and never exceed a trace's recorded length; finished traces ran to the end.
    assert result.totals.decoded_tokens == sum(t.tokens_decoded for t in result.traces)
    for report in result.traces:
        assert report.tokens_decoded <= lengths[report.trace_id]
        if report.status == "finished":
            assert report.tokens_decoded == lengths[report.trace_id]
    latency = result.totals.latency_tokens
    assert latency is not None and 0 < latency <= result.totals.decoded_tokens
    # The answer is a finished trace's answer, and unanimity among answers is never overturned.
    voiced = {t.answer for t in result.traces if t.status == "finished" and t.answer}
    assert result.answer is None or result.answer in voiced
    real = {f for f in finals if f != "ERR"}
    if len(real) == 1 and "ERR" not in finals:
        assert result.answer == next(iter(real))
    # A vote that stopped running finalists had the settled rule's voters: the winning answer
    # has at least min_margin finished votes; under the running rule it also leads every other
    # finished answer by that much (on evidence, committed probes may make up the lead).
    if any(t.status == "aborted" and t.cluster_id is not None for t in result.traces):
        margin = config.settle.min_margin
        assert result.votes and result.votes[0].weight >= margin
        runner_up = result.votes[1].weight if len(result.votes) > 1 else 0.0
        assert result.votes[0].weight - runner_up >= (margin if settle_on == "running" else 0)


async def test_finalists_committed_to_the_leader_stop_once_the_vote_cannot_turn() -> None:
    # All probe "3" at 100 tokens: after four traces the cluster is certain (4 > 0 + 3 left), the
    # other three are stopped unclustered, and the four are the finalists. Traces 0 and 1 finish
    # first on "7" (a lead of 2, not more than the 2 still running); 2 and 3 run on with probes
    # naming "7" from 200 tokens on: committed, so they are stopped.
    long_probes = ["3", "7", "7", "7", "7", "7", "7", "7", "7"]
    pool = _answers_pool(
        [300, 300, 1000, 1000, 1000, 1000, 1000],
        ["7", "7", "9", "9", "9", "9", "9"],
        [["3"], ["3"], long_probes, long_probes, ["3"], ["3"], ["3"]],
    )
    backend = ReplayBackend(pool, chunk_tokens=50)
    config = PruningConfig(n_traces=7, finalists=4)
    plain_judge = ProbeJudge(ProbeClustering(at_tokens=100, reprobe_every=None))
    plain = await DeepPrune(backend, plain_judge, config).run(QUESTION)
    assert plain.answer == "7"
    assert plain.totals.latency_tokens is not None and plain.totals.latency_tokens >= 1000
    probing = ProbeJudge(ProbeClustering(at_tokens=100, reprobe_every=100))
    result = await DeepPrune(backend, probing, config).run(QUESTION)
    assert result.answer == "7"
    assert [t.status for t in result.traces][:4] == ["finished", "finished", "aborted", "aborted"]
    assert result.totals.latency_tokens is not None and result.totals.latency_tokens <= 400
    assert result.totals.decoded_tokens < plain.totals.decoded_tokens


def _settle_pool() -> TracePool:
    # Seven traces, all probing "3" at 100 tokens: after four the cluster is certain (4 > 0 + 3
    # left), the other three are stopped unclustered and traces 0-3 are the finalists. Traces 0
    # and 1 finish first, on "7", at 300 tokens; 2 and 3 run to 1000 with the probes given.
    return _answers_pool(
        [300, 300, 1000, 1000, 1000, 1000, 1000],
        ["7", "7", "9", "9", "9", "9", "9"],
        [["3"], ["3"], ["3"] * 9, ["3"] * 9, ["3"], ["3"], ["3"]],
    )


def _with_probes(pool: TracePool, probes: dict[int, list[str]]) -> TracePool:
    problem = pool.problems[0]
    traces = [
        t.model_copy(update={"probes": probes[i]}) if i in probes else t
        for i, t in enumerate(problem.traces)
    ]
    return TracePool(problems=[problem.model_copy(update={"traces": traces})])


async def _settle_run(pool: TracePool, settle_on: str) -> Any:
    judge = ProbeJudge(ProbeClustering(at_tokens=100, reprobe_every=100, settle_on=settle_on))
    config = PruningConfig(n_traces=7, finalists=4)
    return await DeepPrune(ReplayBackend(pool, chunk_tokens=50), judge, config).run(QUESTION)


async def test_evidence_settles_without_waiting_for_finalists_whose_probes_wander() -> None:
    # Traces 2 and 3 probe a different answer every time: committed to nothing. The two finished
    # "7"s lead by 2 and nothing else has evidence, so the vote is settled at 300 tokens; the
    # running rule waits for both wanderers (a lead of 2 is not more than 2 still running).
    wandering = ["3"] + [str(k) for k in range(10, 18)]
    pool = _with_probes(_settle_pool(), {2: wandering, 3: wandering})
    evidence = await _settle_run(pool, "evidence")
    assert evidence.answer == "7"
    assert [t.status for t in evidence.traces][:4] == ["finished", "finished", "aborted", "aborted"]
    assert evidence.totals.latency_tokens is not None and evidence.totals.latency_tokens <= 400
    running = await _settle_run(pool, "running")
    assert [t.status for t in running.traces][:4] == ["finished"] * 4
    assert running.answer == "7"  # 2 against 2: the earlier-finished group wins the tie
    assert running.totals.decoded_tokens > evidence.totals.decoded_tokens


async def test_evidence_counts_finalists_committed_elsewhere_against_the_leader() -> None:
    # Traces 2 and 3 probe "9" from 200 tokens on: two committed votes against the two finished
    # "7"s, so the vote is not settled; they finish, 2 against 2, and nothing is left to resume
    # (the other three were stopped unclustered).
    nines = ["3"] + ["9"] * 8
    pool = _with_probes(_settle_pool(), {2: nines, 3: nines})
    result = await _settle_run(pool, "evidence")
    assert [t.status for t in result.traces][:4] == ["finished"] * 4
    assert [v.weight for v in result.votes] == [2.0, 2.0]


async def test_a_recorded_probe_asked_again_is_one_observation_not_two() -> None:
    # As above, but traces 2 and 3 recorded "9" once (at 200 tokens) and nothing after: past the
    # last recorded probe the reply repeats it. Repeats are the same observation (observed_at
    # 200), so the two are never committed to "9" and the two finished "7"s settle the vote.
    pool = _with_probes(_settle_pool(), {2: ["3", "9"], 3: ["3", "9"]})
    result = await _settle_run(pool, "evidence")
    assert result.answer == "7"
    assert [t.status for t in result.traces][:4] == ["finished", "finished", "aborted", "aborted"]
    # Recorded on every offset instead, the same answer is observed twice and blocks (as above).
    blocked = await _settle_run(_with_probes(_settle_pool(), {2: ["3"] + ["9"] * 8}), "evidence")
    assert blocked.traces[2].status == "finished"


async def test_evidence_needs_min_margin_finished_votes_probes_alone_do_not_confirm() -> None:
    # Trace 0 finishes alone on "7" at 300; traces 1-3 probe "7" from 200 tokens on (an
    # intermediate value they only pass through) and end on "9". One finished vote is not
    # min_margin (2) however many probes agree, so the run waits and "9" wins 3 to 1.
    sevens = ["3"] + ["7"] * 8
    pool = _answers_pool(
        [300, 1000, 1000, 1000, 1000, 1000, 1000],
        ["7", "9", "9", "9", "9", "9", "9"],
        [["3"], sevens, sevens, sevens, ["3"], ["3"], ["3"]],
    )
    result = await _settle_run(pool, "evidence")
    assert result.answer == "9"
    assert [v.weight for v in result.votes] == [3.0, 1.0]


def test_settle_on_is_checked_by_name() -> None:
    with pytest.raises(ValueError, match="settle_on"):
        ProbeClustering(settle_on="eventually")  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["invoke", "ainvoke"])
async def test_the_chat_model_with_the_probe_judge_clusters_by_probes_not_pair_calls(
    call: str,
) -> None:
    # The chat model wraps its judge to trace each call; the probe judge must still switch the
    # run to probe clustering (no pair scored), with its settings (here the running rule).
    finals = ["204", "204", "204", "150", "204", "204"]
    pool = _answers_pool([400] * 6, finals, [[f] * 4 for f in finals])
    model = DeepPruneReasoner(
        backend=ReplayBackend(pool, chunk_tokens=50),
        judge="probe?at_tokens=100&settle_on=running",
        pruning=PruningConfig(n_traces=6, finalists=2),
    )
    message = model.invoke(QUESTION) if call == "invoke" else await model.ainvoke(QUESTION)
    summary = message.response_metadata["deepprune"]
    assert summary["judge_calls"] == 0 and summary["judge_pairs"] == 0
    # Four "204"s and a "150" probed, the winner is certain (4 > 1 + 1 left): five probes.
    assert summary["probe_calls"] == 5
    assert summary["answer"] == "204"
    assert sorted(summary["clusters"]) == [1, 4]
