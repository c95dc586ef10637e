"""The official Anthropic Python SDK against kimi-proxy (run by tests/anthropic.rs in a venv of its own).

PROXY_URL: the proxy's base URL (as ANTHROPIC_BASE_URL would be). MODEL: a model name the proxy routes
(a Claude Code name, aliased in the test's config). Prints one `ok <check>` line per check; exits 1 at the first
failure, naming it.
"""

import os
import sys

import anthropic

BASE = os.environ["PROXY_URL"]
MODEL = os.environ["MODEL"]
USER = {"role": "user", "content": "Say hello."}
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]

client = anthropic.Anthropic(base_url=BASE, api_key="sk-ant-test-key", max_retries=0)


def check(name, condition, detail=None):
    if not condition:
        print(f"FAIL {name}: {detail!r}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


# A whole message.
message = client.messages.create(model=MODEL, max_tokens=256, messages=[USER])
check("message", message.type == "message" and message.role == "assistant", message)
check("message text", message.content[0].type == "text" and message.content[0].text.startswith("tok0 "), message)
check("message model is the client's name", message.model == MODEL, message.model)
check("message stop reason", message.stop_reason == "end_turn", message.stop_reason)
check("message usage", message.usage.output_tokens > 0 and message.usage.input_tokens > 0, message.usage)

# The same streamed: the SDK's own accumulation of the events gives the same message.
with client.messages.stream(model=MODEL, max_tokens=256, messages=[USER]) as stream:
    streamed_text = "".join(stream.text_stream)
    streamed = stream.get_final_message()
check("stream text", streamed_text == message.content[0].text, streamed_text)
check("stream final message", streamed.content[0].text == streamed_text and streamed.stop_reason == "end_turn", streamed)
check("stream usage", streamed.usage.output_tokens > 0, streamed.usage)

# A tool call streamed, then its result sent back (the round trip an agent makes).
with client.messages.stream(
    model=MODEL, max_tokens=256, messages=[USER], tools=TOOLS, extra_headers={"x-mock-tool-call": "1"}
) as stream:
    asked = stream.get_final_message()
tool_uses = [b for b in asked.content if b.type == "tool_use"]
check("tool call", len(tool_uses) == 1 and tool_uses[0].name == "get_weather", asked.content)
check("tool call input", tool_uses[0].input == {"city": "Paris"}, tool_uses[0].input)
check("tool call stop reason", asked.stop_reason == "tool_use", asked.stop_reason)
answered = client.messages.create(
    model=MODEL,
    max_tokens=256,
    tools=TOOLS,
    messages=[
        USER,
        {"role": "assistant", "content": asked.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_uses[0].id, "content": "18 C, sunny"}],
        },
    ],
)
check("tool result answered", answered.stop_reason == "end_turn" and answered.content[0].type == "text", answered)

# Thinking: the provider's reasoning as thinking blocks, streamed and whole.
thinking = {"type": "enabled", "budget_tokens": 2048}
with client.messages.stream(
    model=MODEL, max_tokens=4096, messages=[USER], thinking=thinking, extra_headers={"x-mock-reasoning": "3"}
) as stream:
    thought = stream.get_final_message()
check("stream thinking block", thought.content[0].type == "thinking", thought.content)
check("stream thinking text", thought.content[0].thinking == "think0 think1 think2 ", thought.content[0])
check("stream text after thinking", thought.content[1].type == "text", thought.content)
whole = client.messages.create(
    model=MODEL, max_tokens=4096, messages=[USER], thinking=thinking, extra_headers={"x-mock-reasoning": "3"}
)
check("message thinking block", whole.content[0].type == "thinking" and whole.content[0].thinking.startswith("think0"), whole.content)

# count_tokens, answered by the proxy.
count = client.messages.count_tokens(model=MODEL, messages=[USER], system="You are terse.")
check("count_tokens", count.input_tokens > 0, count)
longer = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Say hello. " * 100}])
check("count_tokens grows with the prompt", longer.input_tokens > count.input_tokens + 100, longer)

# Errors, as the SDK's exception classes.
try:
    client.messages.create(model="no-such-model", max_tokens=16, messages=[USER])
    check("unknown model raises", False, "no exception")
except anthropic.NotFoundError as error:
    check("unknown model is NotFoundError", error.status_code == 404, error)
    check("unknown model error body", error.body["error"]["type"] == "not_found_error", error.body)
    check("unknown model named", "no-such-model" in error.message, error.message)
try:
    client.messages.create(model=MODEL, max_tokens=16, messages=[USER], extra_headers={"x-mock-status": "401"})
    check("upstream 401 raises", False, "no exception")
except anthropic.AuthenticationError as error:
    check("upstream 401 is AuthenticationError", error.status_code == 401, error)

print("all checks passed", flush=True)
