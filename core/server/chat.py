"""Chat prompts for the server: llama-server's built-in template names, continuation of a final
assistant message, and the rendering the chat endpoints share.

`--chat-template NAME` takes one of llama-server's built-in names (`llama3`, `chatml`, `gemma`,
`mistral-v7`, ...); any other value is the Jinja template's text, as with `--jinja`. The built-in
formats are written here as Jinja templates (the formats of llama.cpp's llama-chat.cpp: the same
text for the same messages), so one renderer serves them and the GGUF's own templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmrt.errors import LlmrtError

# Every template gets `messages` (content always a string) and `add_generation_prompt`.


def _flat(
    turn: str,
    generation: str = "",
    before: str = "",
    sets: str = "",
) -> str:
    """A template that writes `before`, then `turn` for each message (an expression over `m`,
    `loop` and `ns`), then `generation` when asked to."""
    gen = f"{{%- if add_generation_prompt -%}}{{{{ {generation!r} }}}}{{%- endif -%}}"
    return (
        "{%- set ns = namespace(sys='', inside=false) -%}" + sets + f"{{{{ {before!r} }}}}"
        "{%- for m in messages -%}" + turn + "{%- endfor -%}" + (gen if generation else "")
    )


def _by_role(roles: Mapping[str, str], other: str = "") -> str:
    """A message's text chosen by its role: {role: expression}; `other` for the rest."""
    parts = []
    for i, (role, expr) in enumerate(roles.items()):
        parts.append(f"{{%- {'if' if i == 0 else 'elif'} m.role == {role!r} -%}}{{{{ {expr} }}}}")
    if other:
        parts.append(f"{{%- else -%}}{{{{ {other} }}}}")
    return "".join(parts) + "{%- endif -%}"


def _llama2(system: bool, bos_in_history: bool = False, strip: bool = False) -> str:
    content = "(m.content | trim)" if strip else "m.content"
    sys = f"'<<SYS>>\\n' + {content} + '\\n<</SYS>>\\n\\n'" if system else f"{content} + '\\n'"
    again = "<s>[INST] " if bos_in_history else "[INST] "
    turn = (
        f"{{%- if not ns.inside -%}}{{{{ {again!r} }}}}{{%- endif -%}}"
        "{%- set ns.inside = true -%}"
        + _by_role({"system": sys, "user": f"{content} + ' [/INST]'"}, f"{content} + '</s>'")
        + "{%- if m.role not in ('system', 'user') -%}{%- set ns.inside = false -%}{%- endif -%}"
    )
    return _flat(turn, before="[INST] ", sets="{%- set ns.inside = true -%}")


def _mistral(lead: str, trail: str, trim_reply: bool) -> str:
    reply = "(m.content | trim)" if trim_reply else "m.content"
    turn = (
        f"{{%- if not ns.inside -%}}{{{{ {lead + '[INST]' + trail!r} }}}}"
        "{%- set ns.inside = true -%}{%- endif -%}"
        + _by_role(
            {"system": "m.content + '\\n\\n'", "user": f"m.content + {lead + '[/INST]'!r}"},
            f"{trail!r} + {reply} + '</s>'",
        )
        + "{%- if m.role not in ('system', 'user') -%}{%- set ns.inside = false -%}{%- endif -%}"
    )
    return _flat(turn)


def _mistral_v7(space: str) -> str:
    return _flat(
        _by_role(
            {
                "system": f"'[SYSTEM_PROMPT]{space}' + m.content + '[/SYSTEM_PROMPT]'",
                "user": f"'[INST]{space}' + m.content + '[/INST]'",
            },
            f"'{space}' + m.content + '</s>'",
        )
    )


def _tagged(open_: str, close: str, generation: str, trim: bool = False, before: str = "") -> str:
    """Every message as open_ + role + close-ish text: `open_` and `close` are Jinja
    expressions around the role and the content."""
    content = "(m.content | trim)" if trim else "m.content"
    return _flat(f"{{{{ {open_.format(content=content)} + {close} }}}}", generation, before)


def _exaone(tool: bool) -> str:
    roles = {
        "system": "'[|system|]' + (m.content | trim) + '[|endofturn|]\\n'",
        "user": "'[|user|]' + (m.content | trim) + '\\n'",
        "assistant": "'[|assistant|]' + (m.content | trim) + '[|endofturn|]\\n'",
    }
    if tool:
        roles["tool"] = "'[|tool|]' + (m.content | trim) + '[|endofturn|]\\n'"
    return _flat(_by_role(roles), "[|assistant|]")


# A system message merged into the next user turn (formats without a system role).
_GEMMA_TURN = (
    "{%- if m.role == 'system' -%}{%- set ns.sys = ns.sys + (m.content | trim) -%}{%- else -%}"
    "{%- set role = 'model' if m.role == 'assistant' else m.role -%}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{%- if ns.sys and role != 'model' -%}{{ ns.sys + '\\n\\n' }}"
    "{%- set ns.sys = '' -%}{%- endif -%}"
    "{{ (m.content | trim) + '<end_of_turn>\\n' }}{%- endif -%}"
)
_ORION_TURN = (
    "{%- if m.role == 'system' -%}{%- set ns.sys = ns.sys + m.content -%}"
    "{%- elif m.role == 'user' -%}{{ 'Human: ' }}"
    "{%- if ns.sys -%}{{ ns.sys + '\\n\\n' }}{%- set ns.sys = '' -%}{%- endif -%}"
    "{{ m.content + '\\n\\nAssistant: </s>' }}{%- else -%}{{ m.content + '</s>' }}{%- endif -%}"
)
_VICUNA = {
    "user": "'USER: ' + m.content + '\\n'",
    "assistant": "'ASSISTANT: ' + m.content + '</s>\\n'",
}

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": _tagged("'<|im_start|>' + m.role + '\\n' + {content}", "'<|im_end|>\\n'",
                      "<|im_start|>assistant\n"),
    "llama2": _llama2(system=False),
    "llama2-sys": _llama2(system=True),
    "llama2-sys-bos": _llama2(system=True, bos_in_history=True),
    "llama2-sys-strip": _llama2(system=True, strip=True),
    "mistral-v1": _mistral(" ", " ", trim_reply=False),
    "mistral-v3": _mistral("", " ", trim_reply=True),
    "mistral-v3-tekken": _mistral("", "", trim_reply=False),
    "mistral-v7": _mistral_v7(" "),
    "mistral-v7-tekken": _mistral_v7(""),
    "phi3": _tagged("'<|' + m.role + '|>\\n' + {content}", "'<|end|>\\n'", "<|assistant|>\n"),
    "phi4": _tagged("'<|im_start|>' + m.role + '<|im_sep|>' + {content}", "'<|im_end|>'",
                    "<|im_start|>assistant<|im_sep|>"),
    "falcon3": _tagged("'<|' + m.role + '|>\\n' + {content}", "'\\n'", "<|assistant|>\n"),
    "zephyr": _tagged("'<|' + m.role + '|>\\n' + {content}", "'<|endoftext|>\\n'",
                      "<|assistant|>\n"),
    "monarch": _tagged("('' if loop.first else '<s>') + m.role + '\\n' + {content}", "'</s>\\n'",
                       "<s>assistant\n"),
    "gemma": _flat(_GEMMA_TURN, "<start_of_turn>model\n"),
    "orion": _flat(_ORION_TURN),
    "openchat": _flat(
        _by_role({"system": "m.content + '<|end_of_turn|>'"},
                 "'GPT4 Correct ' + (m.role | capitalize) + ': ' + m.content + '<|end_of_turn|>'"),
        "GPT4 Correct Assistant:",
    ),
    "vicuna": _flat(_by_role({"system": "m.content + '\\n\\n'", **_VICUNA}), "ASSISTANT:"),
    "vicuna-orca": _flat(_by_role({"system": "'SYSTEM: ' + m.content + '\\n'", **_VICUNA}),
                         "ASSISTANT:"),
    "deepseek": _flat(
        _by_role({"system": "m.content", "user": "'### Instruction:\\n' + m.content + '\\n'",
                  "assistant": "'### Response:\\n' + m.content + '\\n<|EOT|>\\n'"}),
        "### Response:\n",
    ),
    "deepseek2": _flat(
        _by_role({"system": "m.content + '\\n\\n'", "user": "'User: ' + m.content + '\\n\\n'",
                  "assistant": "'Assistant: ' + m.content + '<｜end▁of▁sentence｜>'"}),
        "Assistant:",
    ),
    "deepseek3": _flat(
        _by_role({"system": "m.content + '\\n\\n'", "user": "'<｜User｜>' + m.content",
                  "assistant": "'<｜Assistant｜>' + m.content + '<｜end▁of▁sentence｜>'"}),
        "<｜Assistant｜>",
    ),
    "command-r": _flat(
        _by_role({
            role: f"'<|START_OF_TURN_TOKEN|><|{token}|>' + (m.content | trim) + "
                  "'<|END_OF_TURN_TOKEN|>'"
            for role, token in (("system", "SYSTEM_TOKEN"), ("user", "USER_TOKEN"),
                                ("assistant", "CHATBOT_TOKEN"))
        }),
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    ),
    "llama3": _tagged("'<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + {content}",
                      "'<|eot_id|>'", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                      trim=True),
    "chatglm3": _tagged("'<|' + m.role + '|>\\n ' + {content}", "''", "<|assistant|>",
                        before="[gMASK]sop"),
    "chatglm4": _tagged("'<|' + m.role + '|>\\n' + {content}", "''", "<|assistant|>\n",
                        before="[gMASK]<sop>"),
    "glmedge": _tagged("'<|' + m.role + '|>\\n' + {content}", "''", "<|assistant|>"),
    "minicpm": _flat(_by_role({"user": "'<用户>' + (m.content | trim) + '<AI>'"},
                              "m.content | trim")),
    "exaone3": _exaone(tool=False),
    "exaone4": _exaone(tool=True),
    "rwkv-world": _flat(
        _by_role({"system": "'System: ' + (m.content | trim) + '\\n\\n'",
                  "user": "'User: ' + (m.content | trim) + '\\n\\n' + "
                          "('Assistant:' if loop.last else '')",
                  "assistant": "'Assistant: ' + (m.content | trim) + '\\n\\n'"})
    ),
    "granite": _tagged("'<|start_of_role|>' + m.role + '<|end_of_role|>' + {content}",
                       "'<|end_of_text|>\\n'", "<|start_of_role|>assistant<|end_of_role|>"),
    "megrez": _tagged("'<|role_start|>' + m.role + '<|role_end|>' + {content}", "'<|turn_end|>'",
                      "<|role_start|>assistant<|role_end|>"),
    "llama4": _tagged("'<|header_start|>' + m.role + '<|header_end|>\\n\\n' + {content}",
                      "'<|eot|>'", "<|header_start|>assistant<|header_end|>\n\n", trim=True),
    "smolvlm": _flat(
        _by_role({"system": "m.content + '\\n\\n'",
                  "user": "'User: ' + m.content + '<end_of_utterance>\\n'"},
                 "'Assistant: ' + m.content + '<end_of_utterance>\\n'"),
        "Assistant:",
        before="<|im_start|>",
    ),
}  # fmt: skip


def resolve_template(value: str | None) -> str | None:
    """`--chat-template`'s value as Jinja text: a built-in name's template, else the value."""
    if value is None:
        return None
    return BUILTIN_TEMPLATES.get(value.strip(), value)


class ChatError(LlmrtError):
    """The messages cannot be rendered as asked (a client error)."""


def _final_text(message: Mapping[str, Any]) -> str:
    return str(message.get("content") or "")


def render(
    tokenizer: Any,
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    **kwargs: Any,
) -> str:
    """The prompt of a chat request. With `continue_final_message` the last message (an
    assistant's) is rendered as an unfinished turn: the text stops right after its content, so
    the model goes on writing it (transformers' continue_final_message)."""
    if continue_final_message and add_generation_prompt:
        raise ChatError("add_generation_prompt and continue_final_message cannot both be true")
    if continue_final_message and not messages:
        raise ChatError("continue_final_message needs a final message to continue")
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, template=template, **kwargs
    )
    if not continue_final_message:
        return text
    final = _final_text(messages[-1])
    for needle in (final, final.strip()):
        at = text.rfind(needle) if needle else -1
        if at >= 0:
            return text[: at + len(needle)]
    raise ChatError(
        "continue_final_message: the chat template does not write the final message's text"
    )
