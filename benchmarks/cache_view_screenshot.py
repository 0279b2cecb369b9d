"""Draw the README's picture of the cache view (docs/cache_view.png) from a live server.

    python benchmarks/cache_view_screenshot.py                        # the demo model, docs/cache_view.png
    python benchmarks/cache_view_screenshot.py --out /tmp/view.png --width 1440 --height 900

Starts `radixlm serve --enable-cache-view --api-key ...` on the trained demo model with the
host tier on and a small device pool (so some prefixes are demoted to the host and show as
such), runs a realistic workload over /v1/chat/completions: few-shot families (sentiment with
two labelled reviews, arithmetic with two worked sums, extraction with one worked sentence),
each asked several questions, some twice; multi-turn conversations that grow turn by turn;
and one long answer still decoding while the picture is taken, so its path is locked. Then it
opens /cache?api_key=... in headless Chromium (Debian's `chromium`, or $RADIXLM_CHROMIUM),
waits for the drawing, clicks the deepest node reused by several requests, and saves a PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

import radixlm as rl

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "screenshot-key"
SYSTEM = "You are a helpful assistant."
SENTIMENT = "Is this review positive or negative? "
SENTIMENT_SHOTS = [
    ("The battery lasts all day and the screen is gorgeous. I would happily buy it again.", "positive"),
    ("It stopped working after a week. A total waste of money.", "negative"),
]
REVIEWS = [
    "Absolutely love this coffee maker, best purchase this year.",
    "The suitcase arrived broken and the refund took a month.",
    "The hotel room was spotless and the staff were friendly.",
    "Loud, slow and overpriced. I regret buying it.",
    "My kids play with it every day. It was a wonderful surprise.",
]
ARITHMETIC_SHOTS = [("What is 12 + 30?", "42"), ("What is 75 - 18?", "57")]
SUMS = ["What is 23 + 19?", "What is 64 - 27?", "What is 8 + 91?", "What is 50 - 44?"]
EXTRACT = "Extract name, age and city as JSON: "
EXTRACT_SHOT = ("Meet Amara, a 29-year-old from Nairobi.", '{"name": "Amara", "age": 29, "city": "Nairobi"}')
PEOPLE = [
    "Jonas is 41 and lives in Hamburg.",
    "Priya, 35, moved to Pune last year.",
    "Say hello to Mateo, a 22-year-old from Lima.",
]
CONVERSATIONS = [
    ["My name is Lena.", "What is 14 + 27?", "What is my name?"],
    ["Hi, I'm Kofi.", SENTIMENT + "Great value, works perfectly.", "What is my name?"],
    ["Call me Yuki.", "What is 90 - 33?", "Do you remember my name?"],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "radixlm.runtime.entrypoints.cli", "serve", "--model", model]
    cmd += ["--port", str(port), "--enable-cache-view", "--api-key", API_KEY]
    # a small device pool with the host tier behind it: the workload demotes some prefixes
    cmd += ["--enable-hierarchical-cache", "--max-total-tokens", "700", "--hicache-ratio", "4"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("radixlm ready:"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"radixlm serve did not start (exit code {proc.poll()})")


def client_for(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"})


def chat(client: httpx.Client, messages: list[dict], max_tokens: int = 24, ignore_eos: bool = False) -> str:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": ignore_eos}
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def still_decoding(url: str) -> None:
    """A long answer, on its own client; the server is stopped under it."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about Nairobi."}]
    try:
        with client_for(url) as client:
            chat(client, messages, 400, ignore_eos=True)
    except httpx.HTTPError:
        pass


def shots(pairs: list[tuple[str, str]], prefix: str = "") -> list[dict]:
    out = [{"role": "system", "content": SYSTEM}]
    for question, answer in pairs:
        out += [{"role": "user", "content": prefix + question}, {"role": "assistant", "content": answer}]
    return out


def workload(client: httpx.Client) -> None:
    sentiment = shots(SENTIMENT_SHOTS, SENTIMENT)
    arithmetic = shots(ARITHMETIC_SHOTS)
    extraction = shots([EXTRACT_SHOT], EXTRACT)
    for i, review in enumerate(REVIEWS + REVIEWS[:2]):  # the first two asked twice
        chat(client, [*sentiment, {"role": "user", "content": SENTIMENT + review}], 4)
        if i < len(SUMS):
            chat(client, [*arithmetic, {"role": "user", "content": SUMS[i]}], 6)
        if i < len(PEOPLE):
            chat(client, [*extraction, {"role": "user", "content": EXTRACT + PEOPLE[i]}], 32)
    chat(client, [*arithmetic, {"role": "user", "content": SUMS[0]}], 6)
    for turns in CONVERSATIONS:
        messages = [{"role": "system", "content": SYSTEM}]
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            messages.append({"role": "assistant", "content": chat(client, messages, 16)})


def browser_path() -> str:
    path = os.environ.get("RADIXLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise SystemExit("no Chromium found: apt-get install chromium, or set RADIXLM_CHROMIUM")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(rl.demo_model_path()))
    parser.add_argument("--out", default=str(ROOT / "docs" / "cache_view.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_server(args.model, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with client_for(url) as client:
            workload(client)
            # a long answer that overflows the device pool: the least recently used prefixes
            # are demoted to the host tier
            story = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me a story."}]
            chat(client, story, 150, ignore_eos=True)
            # and one still decoding while the picture is taken: its prefix is locked
            threading.Thread(target=still_decoding, args=(url,), daemon=True).start()
            time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=browser_path(), args=["--no-sandbox"])
                # bypass_csp: Playwright's polling evaluates strings, which the page's policy forbids
                page = browser.new_page(
                    viewport={"width": args.width, "height": args.height}, bypass_csp=True
                )
                page.goto(f"{url}/cache?api_key={API_KEY}")
                page.wait_for_function("window.cacheView && window.cacheView.renders > 0")
                snap = page.evaluate("window.cacheView.lastSnapshot")["replicas"][0]
                # the node that saved the most prefill: hits times its tokens
                target = max(snap["nodes"][1:], key=lambda n: (n["hits"] * n["tokens"], n["start"]))
                page.click(f'#chart [data-node-id="{target["id"]}"] rect.box', force=True)
                page.wait_for_function(f"window.cacheView.selectedId === {target['id']}")
                page.mouse.move(1, 1)  # the panel narrowed the chart: no hover outline left under the pointer
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out)
                browser.close()
            print(f"wrote {args.out}: {len(snap['nodes'])} nodes; clicked node #{target['id']}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
