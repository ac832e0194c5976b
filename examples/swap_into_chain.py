"""Swap DeepPrune into an existing LCEL chain: the chain stays, one line changes.

    prompt | model | StrOutputParser()

Before, ``model`` was an ordinary chat model. After, it is a ``DeepPruneReasoner``: it samples eight
reasoning traces, stops the redundant ones early, finishes a few and returns the voted answer as an
``AIMessage``, so the prompt template, the parser, ``invoke``/``batch``/``ainvoke`` all work as before.

Run: .venv/bin/python examples/swap_into_chain.py   (offline: the embedded trace pool, no model)
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from deepprune_lc import DeepPruneReasoner, PruningConfig, TokensPrefix
from deepprune_lc.demo import load_demo_pool

prompt = ChatPromptTemplate.from_messages(
    [
        ("system", "Solve the problem step by step. Put the final answer in \\boxed{{}}."),
        ("human", "{question}"),
    ]
)

# The chain as it was:
#     model = ChatOpenAI(model="gpt-4.1-mini", temperature=0.7)
# The one line that changes (the embedded traces are short, so the judge reads 40-token prefixes;
# on a real engine: DeepPruneReasoner(backend="vllm:Qwen/Qwen3-8B")):
model = DeepPruneReasoner(
    backend="replay:demo", pruning=PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)
)

chain = prompt | model | StrOutputParser()


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def main() -> None:
    problems = load_demo_pool().problems

    # The chain's output is the winning trace's text, exactly as a single model call's would be.
    answer = chain.invoke({"question": problems[0].problem})
    print(f"Q: {problems[0].problem}\nA: ...{last_line(answer)}\n")

    # batch works unchanged; every call runs its own set of parallel traces.
    for problem, text in zip(
        problems, chain.batch([{"question": p.problem} for p in problems]), strict=True
    ):
        print(f"{problem.id}: ...{last_line(text)[-60:]}  (truth {problem.answer})")

    # Drop the parser to see what the vote looked like: response_metadata["deepprune"].
    message = (prompt | model).invoke({"question": problems[0].problem})
    summary = message.response_metadata["deepprune"]
    print(
        f"\nvote {summary['votes']}, clusters {summary['clusters']}, "
        f"{summary['decoded_tokens']} tokens decoded, savings {summary['token_savings']:.0%}"
    )


if __name__ == "__main__":
    main()
