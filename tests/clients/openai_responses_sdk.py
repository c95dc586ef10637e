"""The official OpenAI Python SDK's `client.responses` against kimi-proxy (run by tests/responses.rs).

Environment: BASE_URL (the proxy's /v1), MODEL, and NATIVE=1 when the model's provider speaks Responses itself
(then a `background` response is made and cancelled too). Prints one JSON object with what it saw; any failed
check raises (non-zero exit, traceback on stderr).
"""

import json
import os

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["BASE_URL"], api_key="sk-test", max_retries=0)
MODEL = os.environ["MODEL"]
NATIVE = os.environ.get("NATIVE") == "1"
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
seen = {"sdk": openai.__version__}

# 1. Text, not streamed.
text = client.responses.create(model=MODEL, instructions="Be terse.", input="Say hello.")
assert text.status == "completed", text
assert text.output_text, text
assert text.usage is not None and text.usage.output_tokens > 0, text.usage
seen["text"] = {"id": text.id, "output_text": text.output_text, "model": text.model}

# 2. Text, streamed: raw events, then the SDK's stream helper and its final response.
events = list(client.responses.create(model=MODEL, input="Say hello.", stream=True))
types = [e.type for e in events]
assert types[0] == "response.created" and types[-1] == "response.completed", types
assert [e.sequence_number for e in events] == list(range(len(events)))
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert deltas == events[-1].response.output_text, (deltas, events[-1].response)
with client.responses.stream(model=MODEL, input="Say hello.") as stream:
    for _ in stream:
        pass
    final = stream.get_final_response()
assert final.output_text, final
seen["stream"] = {"types": sorted(set(types)), "text": deltas, "final": final.output_text}

# 3. A function tool call round trip, the result sent back with previous_response_id.
call_response = client.responses.create(
    model=MODEL,
    input="What is the weather in Paris?",
    tools=TOOLS,
    extra_headers={"x-mock-tool-call": "1"},
)
calls = [item for item in call_response.output if item.type == "function_call"]
assert len(calls) == 1, call_response.output
call = calls[0]
assert call.name == "get_weather", call
json.loads(call.arguments)
answer = client.responses.create(
    model=MODEL,
    previous_response_id=call_response.id,
    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
    tools=TOOLS,
)
assert answer.status == "completed" and answer.output_text, answer
seen["tool"] = {"call_id": call.call_id, "arguments": call.arguments, "answer": answer.output_text}

# 4. The same round trip streamed.
with client.responses.stream(
    model=MODEL,
    input="What is the weather in Rome?",
    tools=TOOLS,
    extra_headers={"x-mock-tool-call": "1"},
) as stream:
    for _ in stream:
        pass
    streamed_call = stream.get_final_response()
streamed_calls = [item for item in streamed_call.output if item.type == "function_call"]
assert len(streamed_calls) == 1, streamed_call.output
followed = client.responses.create(
    model=MODEL,
    previous_response_id=streamed_call.id,
    input=[
        {
            "type": "function_call_output",
            "call_id": streamed_calls[0].call_id,
            "output": "cloudy",
        }
    ],
    tools=TOOLS,
    stream=True,
)
followed_types = [e.type for e in followed]
assert followed_types[-1] == "response.completed", followed_types

# 5. previous_response_id on a text answer; the stored response read, listed and deleted.
follow_up = client.responses.create(
    model=MODEL, previous_response_id=text.id, input="And once more?"
)
assert follow_up.output_text
retrieved = client.responses.retrieve(text.id)
assert retrieved.id == text.id and retrieved.output_text == text.output_text, retrieved
items = list(client.responses.input_items.list(text.id))
assert [i.type for i in items] == ["message"], items
try:
    client.responses.cancel(text.id)
    raise AssertionError("a response that was not made in the background was cancelled")
except openai.BadRequestError as error:
    seen["cancel_refused"] = error.body
client.responses.delete(text.id)
try:
    client.responses.retrieve(text.id)
    raise AssertionError("a deleted response was found")
except openai.NotFoundError:
    pass
try:
    client.responses.create(model=MODEL, previous_response_id=text.id, input="again")
    raise AssertionError("a deleted previous_response_id was accepted")
except openai.NotFoundError as error:
    seen["not_found"] = error.body

# 6. A background response, cancelled (only a provider that speaks Responses runs one).
if NATIVE:
    queued = client.responses.create(model=MODEL, input="Write a long story.", background=True)
    assert queued.status in ("queued", "in_progress"), queued
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.id == queued.id and cancelled.status == "cancelled", cancelled
    seen["cancelled"] = cancelled.status

print(json.dumps(seen))
