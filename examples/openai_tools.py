"""OpenAI tool calling against `radixlm serve`, with the official `openai` client: the model
calls a tool, this script runs it and sends the result back, until the model answers.

    radixlm serve --model "$(python -c 'import radixlm; print(radixlm.demo_model_path())')" --port 30000
    python examples/openai_tools.py --base-url http://127.0.0.1:30000/v1
    python examples/openai_tools.py --base-url ... --stream      # the same loop, streamed

Nothing here is radixlm-specific: it is the loop any OpenAI-compatible server runs. The tools
are the demo model's, run by react_agent.py's functions: `calculator(expression)` (evaluated
with `ast`, never `eval`) and `get_weather(city)` (a fixed, made-up report).
"""

from __future__ import annotations

import argparse
import json
import urllib.request

from openai import OpenAI
from react_agent import calculator, get_weather  # the same tools as the DSL agent example

from radixlm.demo_model.tasks import CALCULATOR_TOOL, WEATHER_TOOL

TOOLS = {"calculator": calculator, "get_weather": get_weather}


def run_tool(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments)
        return TOOLS[name](**args)
    except (KeyError, TypeError, ValueError) as exc:
        return f"error: cannot run {name}({arguments}): {exc}"


def ask(client: OpenAI, question: str, stream: bool, max_steps: int = 4) -> str:
    messages: list[dict] = [{"role": "user", "content": question}]
    print(f"[user] {question}")
    for _ in range(max_steps):
        kw = {
            "model": "demo",
            "messages": messages,
            "tools": [CALCULATOR_TOOL, WEATHER_TOOL],
            "temperature": 0,
        }
        if stream:
            content, calls = "", {}
            for chunk in client.chat.completions.create(stream=True, **kw):
                delta = chunk.choices[0].delta if chunk.choices else None
                content += (delta and delta.content) or ""
                for call in (delta and delta.tool_calls) or []:
                    entry = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                    entry["name"] += (call.function and call.function.name) or ""
                    entry["arguments"] += (call.function and call.function.arguments) or ""
            tool_calls = [calls[i] for i in sorted(calls)]
        else:
            message = client.chat.completions.create(**kw).choices[0].message
            content = message.content or ""
            tool_calls = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in message.tool_calls or []
            ]
        if not tool_calls:
            print(f"[assistant] {content}")
            return content
        messages.append({"role": "assistant", "content": content or None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in tool_calls]})  # fmt: skip
        for call in tool_calls:
            result = run_tool(call["name"], call["arguments"])
            print(f"[assistant] calls {call['name']}({call['arguments']})\n[tool] {result}")
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    raise RuntimeError(f"no answer after {max_steps} steps")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:30000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--question",
        action="append",
        help="ask this (repeatable; default: a product and the weather in Lisbon)",
    )
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    for question in args.question or [
        "Use the calculator: what is 1234 * 5678?",
        "What is the weather in Lisbon?",
    ]:
        ask(client, question, args.stream)
    # radixlm's own route (the loop above is plain OpenAI): later requests reused the first's prefix
    url = args.base_url.removesuffix("/v1") + "/server_info"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {args.api_key}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        info = json.load(r)
    tokens = f"{info['cached_tokens']} of {info['prompt_tokens']} prompt tokens"
    print(f"cache hit rate: {100 * info['cache_hit_rate']:.1f}% ({tokens} from the radix cache)")


if __name__ == "__main__":
    main()
