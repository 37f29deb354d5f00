"""The OpenAI Agents SDK (``openai-agents``, tracing off) on the gateway's Responses API: an
agent with one function tool runs to completion on an Anthropic- and a Gemini-kind model
(fakes on loopback), whole and streamed, the tool called with the model's arguments."""
from __future__ import annotations

import asyncio

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.test_dialects_sdk import FAKE_OF, kinds_models

RESULT = "sunny and 21 degrees"


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("model", ["claude", "gem"])
def test_an_agent_runs_one_function_tool_to_completion(make_gateway, request, model, streamed,
                                                       fake_openai, fake_anthropic,
                                                       fake_gemini):
    gw = make_gateway(kinds_models(fake_openai, fake_anthropic, fake_gemini),
                      rate_limit={"rpm": 1000})
    fake = request.getfixturevalue(FAKE_OF[model])
    fake.tool_call_next("get_weather", '{"city": "Paris"}')
    fake.reply_text = "It is sunny in Paris."
    set_tracing_disabled(True)                # traces would go to api.openai.com
    called: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather of a city.

        Args:
            city: The city's name.
        """
        called.append(city)
        return RESULT

    client = gw.async_sdk(gw.key_for())
    agent = Agent(name="weather", instructions="Answer with the weather, briefly.",
                  tools=[get_weather],
                  model=OpenAIResponsesModel(model=model, openai_client=client))

    async def run():
        try:
            if not streamed:
                return await Runner.run(agent, "What is the weather in Paris?")
            result = Runner.run_streamed(agent, "What is the weather in Paris?")
            kinds = [event.type async for event in result.stream_events()]
            assert "run_item_stream_event" in kinds
            return result
        finally:
            await client.close()

    result = asyncio.run(run())
    assert called == ["Paris"]
    assert result.final_output == "It is sunny in Paris."
    assert len(fake.requests) == 2                 # the call, then the answer to its result
    assert RESULT in fake.last().body.decode()
