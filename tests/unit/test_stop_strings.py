"""Stop strings: the shared matcher (``deepprune_lc.backends.stops``), the replay backend across a
park point, and a chat-model call's ``stop``. The cross-backend contract (the text ends right before
the stop string, the ids end with the token that completed it, ``"stop"``) is the backend suite's
``test_stop_strings_*``, which replay, transformers and vLLM all run."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from deepprune_lc.backends import ReplayBackend, StopMatcher, TracePool
from deepprune_lc.backends.pool import PoolProblem, PoolTrace
from deepprune_lc.core.config import PruningConfig, SamplingConfig
from deepprune_lc.core.ports import TraceDelta, TraceRequest
from deepprune_lc.langchain import DeepPruneReasoner


def _run(matcher: StopMatcher, pieces: Sequence[str]) -> tuple[list[str], bool]:
    """Push pieces until a match; flush at the end when none came."""
    out: list[str] = []
    for piece in pieces:
        text, hit = matcher.push(piece)
        out.append(text)
        if hit:
            return out, True
    out.append(matcher.flush())
    return out, False


def test_a_stop_string_split_across_deltas_is_never_emitted() -> None:
    # The transformers bug: "\n\nThe answer" had been streamed when " is" completed the match.
    out, hit = _run(StopMatcher(["The answer is"]), ["So 42.", "\n\nThe", " answer", " is", " 42"])
    assert hit
    assert out == ["So 42.", "\n\n", "", ""]
    assert "".join(out) == "So 42.\n\n"


def test_held_text_is_released_as_soon_as_it_cannot_start_a_stop_string() -> None:
    matcher = StopMatcher(["The answer is"])
    assert matcher.push("x The") == ("x ", False)
    assert matcher.held == "The"
    assert matcher.push(" answer was") == ("The answer was", False)
    assert matcher.held == ""


def test_the_stop_string_that_completes_first_wins() -> None:
    # "cd" completes before "abcdef" does, though listed second; as one token at a time would do.
    out, hit = _run(StopMatcher(["abcdef", "cd"]), ["xabcdefg"])
    assert (out, hit) == (["xab"], True)
    # Ties (both complete at the same character) go to the first listed.
    assert StopMatcher(["bc", "abc"]).push("zabc") == ("za", True)
    assert StopMatcher(["abc", "bc"]).push("zabc") == ("z", True)


def test_a_stop_string_ending_mid_piece_drops_the_rest_of_the_piece() -> None:
    out, hit = _run(StopMatcher(["END"]), ["one ", "two E", "ND three"])
    assert (out, hit) == (["one ", "two ", ""], True)


def test_text_held_at_the_end_is_flushed() -> None:
    out, hit = _run(StopMatcher(["###"]), ["a #", "#"])
    assert not hit
    assert "".join(out) == "a ##"
    assert out[-1] == "##"


def test_resume_returns_what_the_parked_stream_held_back() -> None:
    parked = StopMatcher(["STOP"])
    assert parked.push("abc ST") == ("abc ", False)
    resumed = StopMatcher(["STOP"])
    assert resumed.resume("abc ST") == "ST"
    assert resumed.push("OP!") == ("", True)  # the stop straddled the park point: caught
    other = StopMatcher(["STOP"])
    other.resume("abc ST")
    assert other.push("ART") == ("START", False)


def test_empty_stop_strings_are_ignored_and_a_bare_string_is_refused() -> None:
    matcher = StopMatcher(["", ""])
    assert not matcher
    assert matcher.push("anything") == ("anything", False)
    with pytest.raises(TypeError, match="one string"):
        StopMatcher("END")


# -- the replay backend ------------------------------------------------------------------------------

PROMPT = "A synthetic question about stop strings?"


def _request(
    request_id: str, *, stop: Sequence[str], max_tokens: int = 200, resume: Sequence[int] = ()
) -> TraceRequest:
    return TraceRequest(
        request_id,
        0,
        PROMPT,
        SamplingConfig(temperature=0.0, max_tokens=max_tokens, stop=tuple(stop)),
        seed=0,
        resume_token_ids=tuple(resume),
    )


async def _collect(backend: ReplayBackend, request: TraceRequest) -> list[TraceDelta]:
    return [delta async for delta in backend.stream(request)]


def _text(deltas: Sequence[TraceDelta]) -> str:
    return "".join(d.text for d in deltas)


def _ids(deltas: Sequence[TraceDelta]) -> list[int]:
    return [i for d in deltas for i in d.token_ids]


async def test_replay_catches_a_stop_string_across_the_park_point() -> None:
    backend = ReplayBackend.synthetic(1, 120, prompt=PROMPT, yield_every=1)
    full = await _collect(backend, _request("full", stop=()))
    pieces = [d.text for d in full]
    text = "".join(pieces)
    k = next(  # park after token k-1, inside a stop string spanning tokens k-1 and k
        k
        for k in range(5, len(pieces) - 1)
        if text.find(pieces[k - 1] + pieces[k]) == len("".join(pieces[: k - 1]))
    )
    stop = pieces[k - 1] + pieces[k]
    before = "".join(pieces[: k - 1])
    parked: list[TraceDelta] = []
    async for delta in backend.stream(_request("p", stop=(stop,))):
        parked.append(delta)
        if len(_ids(parked)) == k and delta.finish_reason is None:
            await backend.abort("p")
    assert parked[-1] == TraceDelta((), "", "abort")  # exact abort: the held text is not sent
    assert _text(parked) == before  # the start of the stop string was held back
    resumed = await _collect(backend, _request("r", stop=(stop,), resume=_ids(parked)))
    assert resumed[-1].finish_reason == "stop"
    assert _text(parked + resumed) == before
    assert _ids(parked + resumed) == _ids(full)[: k + 1]


async def test_replay_releases_held_text_when_it_resumes_at_its_budget() -> None:
    backend = ReplayBackend.synthetic(1, 120, prompt=PROMPT, yield_every=1)
    full = await _collect(backend, _request("full", stop=()))
    tail = full[9].text
    assert tail
    stop = tail + "\x00"  # begins like token 9 and never matches
    parked = await _collect(backend, _request("p", stop=(stop,), max_tokens=10))
    assert parked[-1].finish_reason == "length"
    assert _text(parked) == _text(full[:10])  # released at the end of the stream
    at_budget = await _collect(
        backend, _request("r", stop=(stop,), max_tokens=10, resume=_ids(full[:10]))
    )
    # A parked stream would have held the tail back; resumed with nothing left to produce, the
    # stream releases it.
    assert at_budget == [TraceDelta((), tail, "length")]


# -- the chat model ---------------------------------------------------------------------------------

QUESTION = "What is 3 plus 4?"
STOP = "The answer is"
TRACES = [
    f"First, 3 plus 4. {step} So we get \\boxed{{7}}.\n\nThe answer is 7, as computed above."
    for step in ("Count up from 3.", "Then 3 + 4 = 7.", "Adding gives 7.", "Four more than 3.")
]


def test_a_call_stop_string_is_cut_from_the_answer_on_replay() -> None:
    pool = TracePool(
        problems=[
            PoolProblem(
                id="sum",
                problem=QUESTION,
                answer="7",
                traces=[PoolTrace(text=t, reference_answer="7") for t in TRACES],
            )
        ],
        source="<stop strings>",
    )
    model = DeepPruneReasoner(
        backend=ReplayBackend(pool, yield_every=1), pruning=PruningConfig(n_traces=4)
    )
    message = model.invoke(QUESTION, stop=[STOP])
    # The content is a trace cut right before the stop string: no part of it is left.
    assert message.content in {t[: t.index(STOP)] for t in TRACES}
    assert isinstance(message.content, str) and message.content.endswith("\\boxed{7}.\n\n")
    assert message.response_metadata["deepprune"]["answer"] == "7"
