"""Chat prompts: llama-server's built-in template names, /apply-template,
/chat/completions/input_tokens, add_generation_prompt and continue_final_message."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from server_helpers import free_port, serve_process

from llmrt.server.chat import BUILTIN_TEMPLATES, resolve_template
from llmrt.tokenizer.chat import render_chat_template

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]


@pytest.fixture(scope="module")
def llama3(live_server):
    return live_server(n_ctx=256, chat_template=resolve_template("llama3"))


def test_llama3_and_chatml_are_their_published_formats():
    # Meta's Llama 3 prompt format and ChatML, as their model cards write them
    got = render_chat_template(BUILTIN_TEMPLATES["llama3"], CHAT[:2])
    assert got == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    got = render_chat_template(BUILTIN_TEMPLATES["chatml"], CHAT[:2])
    assert got == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_every_builtin_writes_every_message_in_order(name):
    template = BUILTIN_TEMPLATES[name]
    text = render_chat_template(template, CHAT, add_generation_prompt=False)
    at = 0
    for m in CHAT:
        found = text.find(m["content"], at)
        assert found >= 0, f"{name}: {m['content']!r} missing or out of order in {text!r}"
        at = found + len(m["content"])
    # asking for the assistant's turn only appends to the conversation
    with_prompt = render_chat_template(template, CHAT, add_generation_prompt=True)
    assert with_prompt.startswith(text)


def test_names_resolve_and_other_text_is_a_template():
    assert resolve_template("gemma") == BUILTIN_TEMPLATES["gemma"]
    assert resolve_template("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"
    assert resolve_template(None) is None


def test_apply_template_with_a_builtin_name(llama3):
    props = httpx.get(llama3.url + "/props").json()
    assert "<|start_header_id|>" in props["chat_template"]
    r = httpx.post(llama3.url + "/apply-template", json={"messages": CHAT[:2]})
    assert r.status_code == 200
    assert r.json()["prompt"] == render_chat_template(BUILTIN_TEMPLATES["llama3"], CHAT[:2])


def test_add_generation_prompt_false(llama3):
    body = {"messages": CHAT[:2], "add_generation_prompt": False}
    prompt = httpx.post(llama3.url + "/apply-template", json=body).json()["prompt"]
    assert prompt.endswith("Name a colour.<|eot_id|>")


def test_final_assistant_message_is_continued(llama3):
    messages = [*CHAT[:2], {"role": "assistant", "content": "Gre"}]
    want = "<|start_header_id|>assistant<|end_header_id|>\n\nGre"
    # llama-server's prefill: by default a final assistant message is continued
    prefill = httpx.post(llama3.url + "/apply-template", json={"messages": messages}).json()
    assert prefill["prompt"].endswith(want)
    explicit = {"messages": messages, "continue_final_message": True,
                "add_generation_prompt": False}  # fmt: skip
    assert httpx.post(llama3.url + "/apply-template", json=explicit).json() == prefill
    # and the reply goes on from the prefix
    body = {**explicit, "max_tokens": 2, "temperature": 0, "verbose": True}
    out = httpx.post(llama3.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert out["__verbose"]["prompt"].endswith(want)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [*CHAT[:2], {"role": "assistant", "content": "x"}],
          "continue_final_message": True, "add_generation_prompt": True}, "cannot both"),
        ({"messages": [*CHAT[:3], {"role": "assistant", "content": "x"}]}, "two or more"),
        ({"messages": CHAT[:2], "continue_final_message": True, "add_generation_prompt": False},
         "not the assistant's"),
    ],
)  # fmt: skip
def test_bad_continuations_are_400(llama3, body, message):
    for path in ("/apply-template", "/v1/chat/completions"):
        r = httpx.post(llama3.url + path, json=body, timeout=60)
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]["message"]


def test_input_tokens_counts_the_prompt(llama3, model):
    prompt = httpx.post(llama3.url + "/apply-template", json={"messages": CHAT}).json()["prompt"]
    r = httpx.post(llama3.url + "/chat/completions/input_tokens", json={"messages": CHAT})
    want = model.tokenizer.encode(prompt, add_special=True, parse_special=True)
    assert r.status_code == 200 and r.json() == {"input_tokens": len(want)}
    # the count is what a completion reports as its prompt
    body = {"messages": CHAT, "max_tokens": 1, "temperature": 0}
    usage = httpx.post(llama3.url + "/v1/chat/completions", json=body, timeout=60).json()["usage"]
    assert usage["prompt_tokens"] == len(want)


def test_text_parts_are_joined_by_a_blank_line(llama3):
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "blue?"}]
    body = {"messages": [{"role": "user", "content": parts}]}
    prompt = httpx.post(llama3.url + "/apply-template", json=body).json()["prompt"]
    assert "What is\n\nblue?" in prompt


def test_verbose_only_when_asked(llama3):
    body = {"messages": CHAT[:2], "max_tokens": 1, "temperature": 0}
    plain = httpx.post(llama3.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert "__verbose" not in plain
    body = {"prompt": "Hi", "n_predict": 1, "verbose": True}
    out = httpx.post(llama3.url + "/completion", json=body, timeout=60).json()
    assert out["__verbose"]["prompt"].endswith("Hi")


def test_serve_template_flags(smollm2_path, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}|{{ m.content }}|{{ x }}]{% endfor %}")
    args = ["-m", str(smollm2_path), "-c", "64", "--device", "cpu", "--chat-template-file",
            str(template), "--chat-template-kwargs", '{"x": 7}']  # fmt: skip
    with serve_process(args, tmp_path) as url:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url + "/apply-template", json=body)
        assert r.json() == {"prompt": "[user|hi|7]"}


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--chat-template-kwargs", "[1]"], "a JSON object"),
     (["--chat-template-file", "/nonexistent.jinja"], "cannot read"),
     (["--chat-template", "chatml", "--chat-template-file", "x"], "not both")],
)  # fmt: skip
def test_serve_rejects_bad_template_flags(args, message):
    cmd = [sys.executable, "-m", "llmrt", "serve", "--port", str(free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr


FIREFUNCTION = (  # how fireworks-ai's llama-3-firefunction-v2 template reads its variables
    "{%- set suffix = 'Available functions as JSON spec:' + '\\n' + functions -%}"
    "{%- set suffix = suffix + '\\nToday is ' + datetime + '.' -%}"
    "{{ suffix }}{% for m in messages %}|{{ m.content }}{% endfor %}"
)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip


@pytest.mark.parametrize("tools", [None, [], [TOOL]])
def test_firefunction_template_variables(live_server, tools):
    import datetime

    srv = live_server(n_ctx=256, chat_template=FIREFUNCTION)
    body = {"messages": [{"role": "user", "content": "What is today?"}], "tools": tools}
    r = httpx.post(srv.url + "/apply-template", json=body)
    assert r.status_code == 200, r.text
    prompt = r.json()["prompt"]
    assert f"Today is {datetime.date.today().strftime('%b %d %Y')}." in prompt
    assert prompt.endswith("|What is today?")
    assert ('"name": "get_weather"' in prompt) == bool(tools)  # the tools' JSON, when given
