"""``deepprune bench replay``: the side-by-side bootstrap on a small pool the tests write."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepprune_lc.backends.pool import PoolProblem, PoolTrace, TracePool, load_trace_pool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.cli import app
from deepprune_lc.cli.bench_bootstrap import resample_pool, run_bench
from deepprune_lc.cli.bench_methods import (
    AnswerLookupJudge,
    BenchSettings,
    InstantJudge,
    _ProblemFacts,
    _TraceFacts,
    bench_rules,
    build_judge,
    measure_resample,
    plan_rows,
    random_at_budget,
    shortest_reaching,
)
from deepprune_lc.cli.bench_report import METRICS, BenchReport, load_report, markdown_table
from deepprune_lc.core.config import PruningConfig, SamplingConfig, TokensPrefix
from deepprune_lc.core.ports import Judge, JudgeScores, PrefixPair, TraceRequest
from deepprune_lc.judges import ProbeJudge
from deepprune_lc.runtime import DeepPrune

RULES = bench_rules("math")


def _trace(answer: str, steps: int) -> PoolTrace:
    body = " ".join(
        f"Step {i}: so we compute the next partial value carefully." for i in range(steps)
    )
    return PoolTrace(text=f"{body} Therefore the answer is \\boxed{{{answer}}}.")


def _pool() -> TracePool:
    # Three problems, six traces each, of different lengths; most agree, some do not.
    specs = {
        "easy": ("4", [("4", 2), ("4", 5), ("4", 3), ("4", 7), ("5", 4), ("4", 6)]),
        "split": ("9", [("9", 3), ("8", 2), ("9", 6), ("8", 5), ("9", 4), ("7", 3)]),
        "hard": ("2", [("3", 4), ("3", 2), ("2", 8), ("3", 5), ("1", 3), ("3", 6)]),
    }
    return TracePool(
        problems=[
            PoolProblem(
                id=pid,
                problem=f"Problem {pid}: what is the value?",
                answer=truth,
                traces=[_trace(a, s) for a, s in traces],
            )
            for pid, (truth, traces) in specs.items()
        ],
        source="tiny-pool",
    )


SETTINGS = BenchSettings(
    n_traces=4,
    resamples=3,
    seed=7,
    judges=("lexical", "random", "oracle"),
    prefix_tokens=8,
    finalists=(2,),
)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "tiny.jsonl"
    _pool().write_jsonl(path)
    return path


@pytest.fixture(scope="module")
def report_rows() -> dict[str, list[dict[str, float]]]:
    report = run_bench(_pool(), SETTINGS)
    return {row.key: row.resamples for row in report.rows}


def test_every_method_has_a_row_and_cons_is_the_ratio_baseline(
    report_rows: dict[str, list[dict[str, float]]],
) -> None:
    keys = list(report_rows)
    for key in ("cons", "cons_settled", "esc_w2", "esc_w4", "ac_b1", "ac_b4", "shortest"):
        assert key in keys
    for judge in ("lexical", "random", "oracle"):
        for finalisation in ("robust", "paper"):
            assert f"deepprune_{finalisation}_{judge}_k2" in keys
    # Random pruning is matched to the real judges' budgets, not to the bounds'.
    assert "random_at_deepprune_robust_lexical_k2" in keys
    assert "random_at_deepprune_robust_oracle_k2" not in keys
    assert all(r["tokens_vs_cons"] == 1.0 for r in report_rows["cons"])
    assert all(len(rows) == SETTINGS.resamples for rows in report_rows.values())
    # cons@N finishes all N traces; ESC and Adaptive-Consistency never decode more than it.
    assert all(r["traces_finished"] == 4 for r in report_rows["cons"])
    for key in ("esc_w2", "ac_b1", "ac_b4", "shortest"):
        assert all(r["tokens_vs_cons"] <= 1.0 for r in report_rows[key])


def test_agreement_is_the_share_of_problems_answered_as_cons_n_answers_them(
    report_rows: dict[str, list[dict[str, float]]],
) -> None:
    # cons@N agrees with itself, the shortest-trace bound by construction; the other rows
    # are measured, and a row whose accuracy differs from cons@N's on a resample cannot agree
    # with it on every problem there.
    assert all(r["agreement"] == 1.0 for r in report_rows["cons"] + report_rows["shortest"])
    for key, resamples in report_rows.items():
        for r, c in zip(resamples, report_rows["cons"], strict=True):
            assert 0.0 <= r["agreement"] <= 1.0
            if r["accuracy"] != c["accuracy"]:
                assert r["agreement"] < 1.0, key
    assert any(r["agreement"] < 1.0 for rows in report_rows.values() for r in rows)


def test_a_pool_without_ground_truth_still_measures_agreement() -> None:
    unlabelled = TracePool(
        problems=[p.model_copy(update={"answer": None}) for p in _pool().problems],
        source="unlabelled",
    )
    settings = BenchSettings(**{**SETTINGS.__dict__, "judges": ("lexical",), "resamples": 2})
    labelled = run_bench(_pool(), settings).rows
    rows = run_bench(unlabelled, settings).rows
    assert all(r["accuracy"] == 0.0 for row in rows for r in row.resamples)
    # The same traces ran: the agreement is what it is on the labelled pool, row by row.
    assert [[r["agreement"] for r in row.resamples] for row in rows] == [
        [r["agreement"] for r in row.resamples] for row in labelled
    ]
    assert any(r["agreement"] < 1.0 for row in rows for r in row.resamples)


def test_the_bootstrap_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    pool = _pool()
    first = resample_pool(pool, 4, seed=7, resample=1, replace=True)
    again = resample_pool(pool, 4, seed=7, resample=1, replace=True)
    other = resample_pool(pool, 4, seed=8, resample=1, replace=True)
    texts = [[t.text for t in p.traces] for p in first.problems]
    assert texts == [[t.text for t in p.traces] for p in again.problems]
    assert texts != [[t.text for t in p.traces] for p in other.problems]
    assert all(len(p.traces) == 4 for p in first.problems)
    a = run_bench(pool, SETTINGS)
    b = run_bench(pool, SETTINGS)
    assert a.model_dump() == b.model_dump()


def test_worker_processes_change_no_number() -> None:
    settings = BenchSettings(**{**SETTINGS.__dict__, "judges": ("lexical",), "resamples": 2})
    inline = run_bench(_pool(), settings, jobs=1)
    parallel = run_bench(_pool(), settings, jobs=2)
    assert inline.model_dump() == parallel.model_dump()


def test_without_replacement_needs_enough_traces() -> None:
    pool = _pool()
    drawn = resample_pool(pool, 6, seed=0, resample=0, replace=False)
    assert [sorted(t.text for t in p.traces) for p in drawn.problems] == [
        sorted(t.text for t in p.traces) for p in pool.problems
    ]
    settings = BenchSettings(**{**SETTINGS.__dict__, "n_traces": 7, "replace": False})
    with pytest.raises(ValueError, match="'easy' has 6 recorded traces"):
        run_bench(pool, settings)


def test_random_pruning_never_spends_more_than_deepprunes_budget() -> None:
    rows = plan_rows(SETTINGS, ["lexical"])
    resampled = resample_pool(_pool(), 4, seed=3, resample=0, replace=True)
    numbers = measure_resample(SETTINGS, ["lexical"], resampled, 0)
    spent_anything = False
    for row in rows:
        if row.kind != "random_at_budget":
            continue
        assert row.source is not None
        for random_run, budget in zip(numbers[row.key], numbers[row.source], strict=True):
            assert random_run["tokens"] <= budget["tokens"]
            spent_anything |= int(random_run["tokens"]) > 0
    assert spent_anything
    # And the rule itself: a budget below every trace finishes nothing and has no answer.
    traces = [_TraceFacts(10, "1"), _TraceFacts(20, "2"), _TraceFacts(5, "1")]
    for seed in range(20):
        answer, chosen = random_at_budget(traces, 26, random.Random(seed), RULES)
        assert sum(t.tokens for t in chosen) <= 26 and chosen
    assert random_at_budget(traces, 4, random.Random(0), RULES) == (None, [])
    # Everything fits: every trace votes, and the majority wins.
    answer, chosen = random_at_budget(traces, 35, random.Random(0), RULES)
    assert answer == "1" and len(chosen) == 3


def test_random_pruning_draws_the_same_whatever_else_is_benched() -> None:
    # A row's random order is its own (resample, row, problem): benching more judges beside it,
    # or fewer problems, leaves its numbers as they are.
    resampled = resample_pool(_pool(), 4, seed=3, resample=0, replace=True)
    alone = measure_resample(SETTINGS, ["lexical"], resampled, 0)
    beside = measure_resample(SETTINGS, ["random", "lexical", "oracle"], resampled, 0)
    keys = [r.key for r in plan_rows(SETTINGS, ["lexical"]) if r.kind == "random_at_budget"]
    assert keys and all(alone[k] == beside[k] for k in keys)
    two = TracePool(problems=resampled.problems[1:], source=resampled.source)
    fewer = measure_resample(SETTINGS, ["lexical"], two, 0)
    assert all(alone[k][1:] == fewer[k] for k in keys)


def test_the_shortest_trace_bound_reads_cons_answer() -> None:
    facts = _ProblemFacts([_TraceFacts(30, "7"), _TraceFacts(5, "8"), _TraceFacts(12, "7")], "7")
    best = shortest_reaching(facts, RULES)
    assert best is not None and best.tokens == 12
    assert shortest_reaching(_ProblemFacts(facts.traces, None), RULES) is None


def test_latency_counts_sequential_windows_in_lockstep_steps() -> None:
    # One problem, traces of known lengths in a known order (no resampling involved).
    pool = TracePool(
        problems=[
            PoolProblem(
                id="p",
                problem="What now?",
                answer="1",
                traces=[PoolTrace(text=t) for t in ["a b \\boxed{1}", "a b c d e \\boxed{2}"] * 2],
            )
        ]
    )
    backend = ReplayBackend(pool)
    short, long = (len(backend.trace_token_ids("p", i)) for i in (0, 1))
    assert short < long
    settings = BenchSettings(n_traces=4, judges=("oracle",), esc_windows=(2,), ac_batches=(1,))
    numbers = measure_resample(settings, ["oracle"], pool, 0)
    cons, esc, ac = numbers["cons"][0], numbers["esc_w2"][0], numbers["ac_b1"][0]
    # cons@4: all four in parallel, so the longest trace is the latency.
    assert (cons["tokens"], cons["latency_tokens"]) == (2 * short + 2 * long, long)
    # ESC w2: window 1 disagrees (1 vs 2), so window 2 runs after it: twice the longest.
    assert (esc["tokens"], esc["latency_tokens"]) == (2 * short + 2 * long, 2 * long)
    # Adaptive-Consistency one at a time never settles on 1, 2, 1, 2: the four in sequence.
    assert ac["tokens"] == ac["latency_tokens"] == 2 * short + 2 * long


def test_an_unavailable_judge_is_skipped_with_a_note() -> None:
    settings = BenchSettings(
        **{**SETTINGS.__dict__, "judges": ("lexical", "no-such-judge"), "resamples": 1}
    )
    report = run_bench(_pool(), settings)
    assert not any("no-such-judge" in row.key for row in report.rows)
    assert any(row.key == "deepprune_robust_lexical_k2" for row in report.rows)
    assert len(report.notes) == 1 and "'no-such-judge' skipped" in report.notes[0]
    assert "no-such-judge" in markdown_table(report)


def test_the_probe_judge_on_a_text_pool_is_skipped_with_a_note() -> None:
    # The bench's default judges include "probe"; a text pool records no probes to cluster by.
    settings = BenchSettings(
        **{**SETTINGS.__dict__, "judges": ("lexical", "probe", "wrong"), "resamples": 1}
    )
    report = run_bench(_pool(), settings)
    assert not any("probe" in row.key for row in report.rows)
    assert any(row.key == "deepprune_robust_wrong_k2" for row in report.rows)
    assert len(report.notes) == 1 and "records none" in report.notes[0]


def test_the_command_writes_json_that_round_trips_markdown_and_a_png(
    pool_file: Path, tmp_path: Path
) -> None:
    out_json, out_png, out_md = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.md"
    result = CliRunner().invoke(
        app,
        [
            "bench", "replay", "--pool", str(pool_file), "--n-traces", "4", "--resamples", "2",
            "--seed", "7", "--judges", "lexical,oracle,no-such-judge", "--prefix-tokens", "8",
            "--finalists", "2", "--jobs", "1", "--json", str(out_json), "--plot", str(out_png),
            "--output", str(out_md),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = load_report(out_json)
    assert BenchReport.model_validate_json(report.model_dump_json()) == report
    written = json.loads(out_json.read_text())
    assert [row["key"] for row in written["rows"]] == [row.key for row in report.rows]
    for row in written["rows"]:
        assert len(row["resamples"]) == 2
        assert all(set(r) == set(METRICS) for r in row["resamples"])
    assert "no-such-judge" in written["notes"][0]
    assert report.settings.n_traces == 4 and report.settings.resamples == 2
    assert report.pool == str(pool_file) and report.problems == len(load_trace_pool(pool_file))
    assert out_md.read_text() == markdown_table(report)
    assert all(len(row.resamples) == 2 for row in report.rows)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000
    # The saved report tables again without a re-run; the paired difference of cons@N is zero.
    shown_md, shown_png = tmp_path / "shown.md", tmp_path / "shown.png"
    shown = CliRunner().invoke(
        app, ["bench", "show", str(out_json), "--output", str(shown_md), "--plot", str(shown_png)]
    )
    assert shown.exit_code == 0, shown.output
    assert shown_md.read_text() == out_md.read_text()
    assert shown_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cons = report.row("cons")
    assert report.paired_difference(cons, "accuracy").mean == 0.0
    lexical = report.row("deepprune_robust_lexical_k2")
    assert report.paired_difference(lexical, "accuracy").mean == pytest.approx(
        lexical.spread("accuracy").mean - cons.spread("accuracy").mean
    )
    # Rerunning the report's own settings reproduces it number for number.
    again = run_bench(load_trace_pool(pool_file), report.settings)
    assert again.model_dump() == report.model_dump()
    # A report saved before the "same answer" column existed still tables, with that cell empty.
    for row in written["rows"]:
        for r in row["resamples"]:
            del r["agreement"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(written))
    table = markdown_table(load_report(older))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(report.rows) and all(row.split(" | ")[4] == "–" for row in rows)
    assert "–" not in out_md.read_text()


class _SlowOracle(AnswerLookupJudge):
    """The oracle, answering after a real wait: how a judge on another thread behaves."""

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        await asyncio.sleep(0.05)
        return await super().score(pairs)


def test_a_slow_judge_is_measured_as_if_it_answered_between_two_steps() -> None:
    pool = resample_pool(_pool(), 6, seed=1, resample=0, replace=False)
    config = PruningConfig(n_traces=6, prefix=TokensPrefix(k=8), finalists=2)
    sampling = SamplingConfig(max_tokens=100_000)

    def tokens(judge: Judge) -> list[int]:
        runner = DeepPrune(ReplayBackend(pool, yield_every=1), judge, config, sampling=sampling)
        return [asyncio.run(runner.run(p.problem)).totals.decoded_tokens for p in pool.problems]

    instant = tokens(AnswerLookupJudge(pool, rules=RULES))
    assert tokens(InstantJudge(_SlowOracle(pool, rules=RULES))) == instant
    # Unwrapped, the replay kept decoding while the judge waited.
    assert sum(tokens(_SlowOracle(pool, rules=RULES))) > sum(instant)


def _text_free_pool() -> TracePool:
    """One problem, eight text-free traces: probes name the final answer only from 700 tokens on."""
    finals = ["7", "7", "7", "3", "7", "5", "7", "3"]
    traces = [
        {
            "tokens": 1000 + 100 * i,
            "final_answer": final,
            "probes": (["1"] * 6 + [final] * 10)[: (1000 + 100 * i) // 100],
        }
        for i, final in enumerate(finals)
    ]
    data = {
        "id": "tf",
        "problem": "A text-free problem?",
        "answer": "7",
        "probe_every_tokens": 100,
        "traces": traces,
    }
    return TracePool(problems=[PoolProblem.model_validate(data)])


def test_on_a_text_free_pool_the_probe_and_oracle_rows_probe_the_traces() -> None:
    pool = _text_free_pool()
    # The probe judge is not paused behind InstantJudge (its clustering calls the backend), and the
    # oracle, with no text to look answers up by, is probe clustering on final-answer probes.
    assert build_judge("probe", pool, 0, RULES).__class__.__name__ == "ProbeJudge"
    assert isinstance(build_judge("oracle", pool, 0, RULES), ProbeJudge)
    settings = BenchSettings(
        n_traces=8, resamples=1, judges=("probe", "oracle"), prefix_tokens=8, finalists=(2,)
    )
    numbers = measure_resample(settings, ["probe", "oracle"], pool, 0)
    [cons] = numbers["cons"]
    [probe] = numbers["deepprune_robust_probe_k2"]
    [oracle] = numbers["deepprune_robust_oracle_k2"]
    assert cons["correct"] and probe["correct"] and oracle["correct"]
    # Clustered by probes (not all singletons, which would finish everything): fewer tokens than
    # cons@8, and the oracle, whose probes are right from the first token, fewer still.
    assert oracle["tokens"] < probe["tokens"] < cons["tokens"]
    # Replay's probes cost no tokens, so the calls are what the bench counts of them.
    assert cons["probe_calls"] == 0 and probe["probe_calls"] > 0 and oracle["probe_calls"] > 0
    assert probe["probe_tokens"] == 0


async def test_final_answer_probes_answer_the_recorded_final_answer() -> None:
    backend = ReplayBackend(_text_free_pool(), probe_answers="final", chunk_tokens=50)
    request = TraceRequest("r", 3, "A text-free problem?", SamplingConfig(), 0)
    stream = backend.stream(request)
    await stream.__anext__()
    reply = await backend.probe("r")
    assert (reply.answer, reply.unknown) == ("3", False)  # the recorded probe says "1" here
    await stream.aclose()
    with pytest.raises(ValueError, match="probe_answers"):
        ReplayBackend(_text_free_pool(), probe_answers="oracle")  # type: ignore[arg-type]


async def test_adversarial_probes_join_different_answers_and_part_equal_ones() -> None:
    # Finals 7 7 7 3 7 5 7 3: each trace's probe is its rank among the traces of its final answer.
    backend = ReplayBackend(_text_free_pool(), probe_answers="adversarial", chunk_tokens=50)
    labels = []
    for index in range(8):
        request = TraceRequest(f"r{index}", index, "A text-free problem?", SamplingConfig(), 0)
        stream = backend.stream(request)
        await stream.__anext__()
        reply = await backend.probe(f"r{index}")
        labels.append(reply.answer)
        await stream.aclose()
    # As integers far from every recorded answer: they compare by value, with no verifier call.
    assert labels == [str(-(10**15 + r)) for r in (0, 1, 2, 0, 3, 0, 4, 1)]


async def test_an_adversarial_label_never_names_a_recorded_answer() -> None:
    pool = _text_free_pool()
    problem = pool.problems[0]
    taken = str(-(10**15 + 1))  # what trace 1's label would be
    traces = [
        t.model_copy(update={"final_answer": taken}) if i == 3 else t
        for i, t in enumerate(problem.traces)
    ]
    pool = TracePool(problems=[problem.model_copy(update={"traces": traces})], source="p")
    backend = ReplayBackend(pool, probe_answers="adversarial", chunk_tokens=50)
    request = TraceRequest("r1", 1, problem.problem, SamplingConfig(), 0)
    stream = backend.stream(request)
    await stream.__anext__()
    reply = await backend.probe("r1")
    await stream.aclose()
    finals = {t.final_answer for t in traces}
    assert reply.answer is not None and reply.answer not in finals
    assert reply.answer == str(-(10**16 + 1))


def test_the_always_wrong_judge_costs_tokens_not_accuracy_on_both_kinds_of_pool() -> None:
    pool = _text_free_pool()
    assert isinstance(build_judge("wrong", pool, 0, RULES), ProbeJudge)
    settings = BenchSettings(
        n_traces=8, resamples=1, judges=("wrong",), prefix_tokens=8, finalists=(2,)
    )
    numbers = measure_resample(settings, ["wrong"], pool, 0)
    [cons] = numbers["cons"]
    [robust] = numbers["deepprune_robust_wrong_k2"]
    assert cons["correct"] and robust["correct"]  # every merge was wrong; the vote still holds
    text_pool = _pool()
    judge = build_judge("wrong", text_pool, 0, RULES)
    assert isinstance(judge, AnswerLookupJudge) and judge.invert


def test_a_capped_bench_caps_only_robust_finalisation_and_says_so() -> None:
    # The always-wrong judge splits every vote, so uncapped robust finalisation resumes until it is
    # settled; with at most one trace beyond K2 = 2, no more than three traces finish.
    pool = _text_free_pool()
    settings = BenchSettings(
        n_traces=8,
        resamples=1,
        judges=("wrong",),
        prefix_tokens=8,
        finalists=(2,),
        max_extra_finalists=1,
    )
    numbers = measure_resample(settings, ["wrong"], pool, 0)
    uncapped = measure_resample(replace(settings, max_extra_finalists=None), ["wrong"], pool, 0)
    [capped_robust] = numbers["deepprune_robust_wrong_k2"]
    [free_robust] = uncapped["deepprune_robust_wrong_k2"]
    assert capped_robust["traces_finished"] <= 3 < free_robust["traces_finished"]
    assert numbers["deepprune_paper_wrong_k2"] == uncapped["deepprune_paper_wrong_k2"]
    labels = {spec.key: spec.settings for spec in plan_rows(settings, ["wrong"])}
    assert labels["deepprune_robust_wrong_k2"].endswith("K2 2, at most 1 more")
    assert labels["deepprune_paper_wrong_k2"].endswith("K2 2")
    with pytest.raises(ValueError, match="max_extra_finalists"):
        BenchSettings(max_extra_finalists=-1)


def test_problems_benches_a_subset_and_an_unknown_id_is_named(
    pool_file: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "subset.json"
    args = ["bench", "replay", "--pool", str(pool_file), "--n-traces", "4", "--resamples", "1"]
    args += ["--judges", "oracle", "--prefix-tokens", "8", "--finalists", "2", "--jobs", "1"]
    result = CliRunner().invoke(app, [*args, "--problems", "hard,split", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    report = load_report(out_json)
    assert report.problems == 2
    # The same numbers as a bench of a pool holding just those two problems.
    alone = run_bench(_pool().subset(["hard", "split"]), report.settings)
    assert [r.resamples for r in alone.rows] == [r.resamples for r in report.rows]
    unknown = CliRunner().invoke(app, [*args, "--problems", "hard,nope"])
    assert unknown.exit_code == 2
    assert "'nope'" in unknown.output and "--problems" in unknown.output


def test_a_subset_keeps_the_order_given_and_refuses_unknown_ids() -> None:
    pool = _pool()
    assert [p.id for p in pool.subset(["hard", "easy"])] == ["hard", "easy"]
    with pytest.raises(KeyError, match=r"'nope'.*tiny-pool"):
        pool.subset(["easy", "nope"])
