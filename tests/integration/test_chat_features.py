"""Tools, structured outputs, logprobs, several choices, logit_bias and seed, through the stock openai SDK and
two client libraries as their users call them, against the real model (vLLM's grammars do the forcing)."""

import json
import uuid

import pytest

from tests.integration.conftest import MODEL, MODEL_CACHE_DIR

pytestmark = pytest.mark.integration
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
NO_RAG = {"rag": False}


def _weather_args(call) -> dict:
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    return arguments


def test_a_required_tool_call_is_a_valid_call_of_a_declared_tool(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", max_tokens=120,
        temperature=0, extra_body=NO_RAG,
    )  # fmt: skip
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [_weather_args(call) for call in choice.message.tool_calls]
    assert response.usage.completion_tokens > 3


def test_a_named_tool_call_streams_as_deltas_the_sdk_adds_up(openai_client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    with openai_client.chat.completions.stream(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=named, max_tokens=120, temperature=0,
        extra_body=NO_RAG, stream_options={"include_usage": True},
    ) as stream:  # fmt: skip
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 2  # streamed piece by piece, not in one block
    (call,) = final.choices[0].message.tool_calls
    assert _weather_args(call) == json.loads("".join(d.arguments_delta for d in deltas))
    assert final.usage.completion_tokens > 3


def test_tool_results_go_back_to_the_model_and_the_conversation_keeps_the_calls(openai_client, http):
    conversation = {"rag": False, "conversation_id": f"tools-{uuid.uuid4().hex}"}
    first = openai_client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", max_tokens=120,
        temperature=0, extra_body=conversation,
    )  # fmt: skip
    (call,) = first.choices[0].message.tool_calls[:1]
    result = {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}
    second = openai_client.chat.completions.create(
        model=MODEL, messages=[result], tools=[WEATHER], max_tokens=40, temperature=0, extra_body=conversation,
    )  # fmt: skip
    assert second.choices[0].message.content  # the model answered from the tool's result
    stored = http.get(f"/v1/conversations/{conversation['conversation_id']}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1]["tool_calls"][0]["id"] == call.id and stored[2]["tool_call_id"] == call.id
    assert stored[3]["content"] == second.choices[0].message.content


def test_a_json_schema_answer_is_valid_against_its_schema(openai_client):
    import jsonschema

    response = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story about a dragon."}], max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        temperature=0, extra_body=NO_RAG,
    )  # fmt: skip
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content), PERSON)


def test_logprobs_cover_every_token_with_the_top_alternatives(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, max_tokens=6, logprobs=True, top_logprobs=3, temperature=0,
        extra_body=NO_RAG,
    )  # fmt: skip
    choice = response.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == response.usage.completion_tokens == 6
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob  # greedy: the chosen token is the most likely one


def test_several_choices_are_answered_and_counted(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, n=3, max_tokens=8, temperature=1.0, seed=7, extra_body=NO_RAG
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert 3 < response.usage.completion_tokens <= 24
    streamed = openai_client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, n=2, max_tokens=8, temperature=1.0, seed=7, stream=True,
        extra_body=NO_RAG,
    )  # fmt: skip
    seen = {choice.index for chunk in streamed for choice in chunk.choices if choice.delta.content}
    assert seen == {0, 1}


def test_seed_repeats_a_sampled_answer_and_logit_bias_bans_a_token(openai_client):
    from transformers import AutoTokenizer

    ask = {"model": MODEL, "messages": ASK_WEATHER, "max_tokens": 12, "extra_body": NO_RAG}
    one, two = (openai_client.chat.completions.create(**ask, temperature=1.0, seed=1234) for _ in range(2))
    assert one.choices[0].message.content == two.choices[0].message.content
    greedy = openai_client.chat.completions.create(**ask, temperature=0).choices[0].message.content
    tokenizer = AutoTokenizer.from_pretrained(f"{MODEL_CACHE_DIR}/{MODEL}")
    first = tokenizer.encode(greedy)[0]
    banned = openai_client.chat.completions.create(**ask, temperature=0, logit_bias={str(first): -100})
    assert tokenizer.encode(banned.choices[0].message.content)[0] != first


def test_langchain_binds_tools_and_asks_for_structured_output(base_url):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    from tests.integration.conftest import MASTER_KEY

    class Person(BaseModel):
        name: str = Field(max_length=20)
        age: int

    llm = ChatOpenAI(
        model=MODEL, base_url=f"{base_url}/v1", api_key=MASTER_KEY, temperature=0, max_tokens=120,
        extra_body=NO_RAG, max_retries=0,
    )  # fmt: skip
    called = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert called.tool_calls[0]["name"] == "get_weather" and isinstance(called.tool_calls[0]["args"]["city"], str)
    for method in ("json_schema", "function_calling"):
        person = llm.with_structured_output(Person, method=method).invoke("Invent a person.")
        assert isinstance(person, Person), method


def test_pydantic_ai_gets_a_typed_answer_through_a_tool_call(base_url):
    from pydantic import BaseModel, Field
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from tests.integration.conftest import MASTER_KEY

    class City(BaseModel):
        name: str = Field(max_length=20)
        country: str = Field(max_length=20)

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=f"{base_url}/v1", api_key=MASTER_KEY))
    agent = Agent(model, output_type=City, model_settings={"max_tokens": 120, "temperature": 0, "extra_body": NO_RAG})
    result = agent.run_sync("Which city is the capital of France?")
    assert isinstance(result.output, City)
