"""The official `openai` client through the picker gateway, unchanged: chat, streaming chat, completion.

Run by test-harness/e2e/tests/filter_openai_client.rs with the gateway's base URL as the only argument;
exits non-zero (with the failing assertion) when any answer is not what an OpenAI-compatible server
returns.
"""

import sys

from openai import OpenAI

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def main(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello?"}],
        max_tokens=7,
    )
    assert chat.object == "chat.completion", chat
    assert chat.choices[0].message.role == "assistant", chat
    assert chat.choices[0].message.content, chat
    assert chat.usage.completion_tokens == 7, chat.usage

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, chunks
    assert all(c.object == "chat.completion.chunk" for c in chunks), chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5, chunks[-1]

    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert completion.object == "text_completion", completion
    assert completion.choices[0].text, completion
    assert completion.usage.completion_tokens == 4, completion.usage

    print(f"openai {__import__('openai').__version__}: chat, streaming chat and completion OK")


if __name__ == "__main__":
    main(sys.argv[1])
