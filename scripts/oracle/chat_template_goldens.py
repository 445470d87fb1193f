#!/usr/bin/env python3
"""Oracle for ChatTemplatesTests: chat-template renderings by Python's jinja2 in EXACTLY the environment
Hugging Face transformers builds in `apply_chat_template` (src/transformers/utils/chat_template_utils.py,
`_cached_compile_jinja_template` / `render_jinja_template`):

  ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                extensions=[AssistantTracker ({% generation %}), jinja2.ext.loopcontrols])
  filters["tojson"]  = json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=False)
  globals["raise_exception"] = raise jinja2.exceptions.TemplateError(message)
  globals["strftime_now"]    = datetime.now().strftime(format)   (here: a FIXED instant, see NOW)
  render(messages=..., tools=<list or None>, documents=<list or None>, add_generation_prompt=...,
         **special tokens (bos_token, eos_token), **chat_template_kwargs)

Inputs (committed):  Tests/ChatTemplatesTests/Fixtures/templates/*.jinja   (real templates, see README.md there)
                     Tests/ChatTemplatesTests/Fixtures/conversations.json  (written by this script from CONVERSATIONS)
Output (committed):  Tests/ChatTemplatesTests/Fixtures/chat_template_goldens.json
                       renders: every template x every conversation -> output text, or the error jinja2 raised
                       cases:   small template/context pairs for the lexer, parser and evaluator edge cases

Usage: python3 -m pip install 'jinja2==3.1.6' && python3 scripts/oracle/chat_template_goldens.py
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "Tests", "ChatTemplatesTests", "Fixtures")
TEMPLATES_DIR = os.path.join(FIXTURES, "templates")

# strftime_now's clock, fixed so renderings are deterministic. The Swift tests pass the same instant (UTC).
NOW = datetime.datetime(2026, 3, 5, 14, 7, 9)


def make_environment():
    """transformers' environment, line for line (AssistantTracker without its index bookkeeping, which
    only matters for return_assistant_tokens_mask: the rendered text is the body, unchanged)."""

    class AssistantTracker(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation_support(self, context, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return NOW.strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_environment()

# Special tokens each model's tokenizer passes (transformers: special_tokens_map). None = not passed (undefined).
TEMPLATES = {
    "smollm2": ("<|im_start|>", "<|im_end|>",
                "HuggingFaceTB/SmolLM2-135M-Instruct, tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma-3": ("<bos>", "<eos>", "google/gemma-3-*-it tokenizer_config.json chat_template"),
    "gemma-2": ("<bos>", "<eos>", "google/gemma-2-2b-it"),
    "llama-3.1": ("<|begin_of_text|>", "<|eot_id|>", "meta-llama/Llama-3.1-8B-Instruct"),
    "llama-3.2": ("<|begin_of_text|>", "<|eot_id|>", "meta-llama/Llama-3.2-3B-Instruct"),
    "qwen-2.5": (None, "<|im_end|>", "Qwen/Qwen2.5-7B-Instruct"),
    "qwen-3": (None, "<|im_end|>", "Qwen/Qwen3-0.6B"),
    "mistral-nemo": ("<s>", "</s>", "mistralai/Mistral-Nemo-Instruct-2407"),
    "phi-3.5": ("<s>", "<|endoftext|>", "microsoft/Phi-3.5-mini-instruct"),
    "deepseek-r1-distill-qwen": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"),
    "granite-3.3": ("<|end_of_text|>", "<|end_of_text|>", "ibm-granite/granite-3.3-2b-instruct"),
    "smollm3": (None, "<|im_end|>", "HuggingFaceTB/SmolLM3-3B (Unsloth edit, as llama.cpp ships it)"),
    "chatml-default": ("<|im_start|>", "<|im_end|>",
                       "Kvant's fallback for models without a template (ChatTemplate.chatML): ChatML, text parts joined"),
    "hermes-3-tool-use": ("<|begin_of_text|>", "<|im_end|>", "NousResearch/Hermes-3-Llama-3.1-8B, tool_use"),
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
                "days": {"type": "integer", "description": "How many days ahead"},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look for"},
                           "max_results": {"type": "number", "description": "At most this many (1.5 = rounding test)"}},
            "required": ["query"],
        },
    },
}


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


def parts(*texts):
    return [{"type": "text", "text": t} for t in texts]


CONVERSATIONS = [
    {"name": "user-only-gen", "add_generation_prompt": True, "messages": [u("Hello!")]},
    {"name": "user-only-nogen", "add_generation_prompt": False, "messages": [u("Hello!")]},
    {"name": "system-user-gen", "add_generation_prompt": True,
     "messages": [s("You are a terse assistant."), u("What is 2+2?")]},
    {"name": "multi-turn-gen", "add_generation_prompt": True,
     "messages": [s("Be brief."), u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")]},
    {"name": "multi-turn-ends-assistant", "add_generation_prompt": False,
     "messages": [u("Name a colour."), a("Blue."), u("Another?"), a("Green.")]},
    {"name": "six-turns", "add_generation_prompt": True,
     "messages": [u("one"), a("two"), u("three"), a("four"), u("five"), a("six"), u("seven")]},
    {"name": "text-parts-user", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": parts("Describe Paris.")}]},
    {"name": "text-parts-multi", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": parts("First part. ", " Second part.")}]},
    {"name": "text-parts-system", "add_generation_prompt": True,
     "messages": [{"role": "system", "content": parts("System in parts.")},
                  {"role": "user", "content": parts("User in parts.")}]},
    {"name": "text-parts-mixed-turns", "add_generation_prompt": False,
     "messages": [{"role": "user", "content": parts("Q1")}, {"role": "assistant", "content": parts("A1")}]},
    {"name": "unicode", "add_generation_prompt": True,
     "messages": [s("Réponds en français, s’il te plaît."),
                  u("你好，世界！ 😀👍🏽 مرحبا  नमस्ते — cafe\u0301 naïve \u200b zero-width")]},
    {"name": "empty-user", "add_generation_prompt": True, "messages": [u("")]},
    {"name": "empty-system", "add_generation_prompt": True, "messages": [s(""), u("Hi")]},
    {"name": "whitespace-content", "add_generation_prompt": True,
     "messages": [s("  padded system \n"), u("\n\n  padded user  \t\n"), a("  padded assistant  "), u(" again ")]},
    {"name": "newlines-and-crlf", "add_generation_prompt": True,
     "messages": [u("line1\nline2\r\nline3\rline4\n")]},
    {"name": "template-like-content", "add_generation_prompt": True,
     "messages": [u("{{ not a tag }} {% if %} {# no #} <|im_end|> <start_of_turn> [INST]")]},
    {"name": "json-special-chars", "add_generation_prompt": True,
     "messages": [u("Quotes \" ' and backslash \\ and tab \t and <html> & stuff")]},
    {"name": "role-order-user-user", "add_generation_prompt": True, "messages": [u("first"), u("second")]},
    {"name": "role-order-assistant-first", "add_generation_prompt": True, "messages": [a("I start."), u("ok")]},
    {"name": "system-only", "add_generation_prompt": True, "messages": [s("Only a system prompt.")]},
    {"name": "qwen3-no-thinking", "add_generation_prompt": True, "messages": [u("Quick: capital of Italy?")],
     "chat_template_kwargs": {"enable_thinking": False}},
    {"name": "thinking-enabled", "add_generation_prompt": True, "messages": [u("Think about 17*23.")],
     "chat_template_kwargs": {"enable_thinking": True}},
    {"name": "assistant-with-think", "add_generation_prompt": True,
     "messages": [u("What is 3*3?"), a("<think>\n3 times 3 is 9.\n</think>\n\n9"), u("And 4*4?")]},
    {"name": "reasoning-content-key", "add_generation_prompt": False,
     "messages": [u("Why?"), {"role": "assistant", "content": "Because.", "reasoning_content": "Let me think."}]},
    {"name": "tools-question", "add_generation_prompt": True, "tools": [WEATHER_TOOL, SEARCH_TOOL],
     "messages": [u("What's the weather in Paris?")]},
    {"name": "tool-call-round-trip", "add_generation_prompt": True, "tools": [WEATHER_TOOL],
     "messages": [u("Weather in Oslo, in celsius?"),
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"id": "call00001", "type": "function",
                                   "function": {"name": "get_weather",
                                                "arguments": {"city": "Oslo", "unit": "celsius", "days": 1}}}]},
                  {"role": "tool", "tool_call_id": "call00001", "name": "get_weather",
                   "content": "{\"temperature\": -3.5, \"sky\": \"snow\"}"},
                  u("Thanks! And tomorrow?")]},
    {"name": "system-no-think-flag", "add_generation_prompt": True,
     "messages": [s("Answer plainly. /no_think"), u("Hi")]},
    {"name": "date-string-kwarg", "add_generation_prompt": True, "messages": [u("What day is it?")],
     "chat_template_kwargs": {"date_string": "01 Jan 2030"}},
    {"name": "documents", "add_generation_prompt": True, "messages": [u("Summarize the document.")],
     "documents": [{"doc_id": 1, "title": "Kvant", "text": "Kvant serves LLMs on the CPU."},
                   {"doc_id": 2, "title": "KV", "text": "Int8 KV caches halve memory."}]},
    {"name": "unknown-role", "add_generation_prompt": True, "messages": [{"role": "developer", "content": "dev"},
                                                                         u("hi")]},
    {"name": "extra-message-keys", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "Hi, I am Ann.", "name": "ann"}]},
    {"name": "assistant-last-gen", "add_generation_prompt": True, "messages": [u("Start"), a("Partial answer")]},
    {"name": "long-content", "add_generation_prompt": True,
     "messages": [u(" ".join("word%d" % i for i in range(300)))]},
    {"name": "empty-messages", "add_generation_prompt": True, "messages": []},
]


def render(env, source, context):
    """Rendered text, or the error jinja2 raised (type name, message, line for syntax errors)."""
    try:
        return {"output": env.from_string(source).render(**context)}
    except jinja2.exceptions.TemplateSyntaxError as e:
        return {"error": {"type": "TemplateSyntaxError", "message": e.message, "line": e.lineno}}
    except jinja2.exceptions.TemplateError as e:
        # TemplateError proper is raise_exception; UndefinedError / SecurityError are its subclasses.
        return {"error": {"type": type(e).__name__, "message": str(e.message if hasattr(e, "message") else e)}}
    except Exception as e:  # TypeError, ValueError, OverflowError... raised by Python code under the template
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def conversation_context(conv, bos, eos):
    ctx = {"messages": conv["messages"], "tools": conv.get("tools"), "documents": conv.get("documents"),
           "add_generation_prompt": conv["add_generation_prompt"]}
    if bos is not None:
        ctx["bos_token"] = bos
    if eos is not None:
        ctx["eos_token"] = eos
    ctx.update(conv.get("chat_template_kwargs", {}))
    return ctx


# Small template/context cases. Expected values come from jinja2 (above environment), never from Kvant.
CASES = [
    # --- text, comments, whitespace control, trim_blocks / lstrip_blocks
    ("plain-text", "Hello, world", {}),
    ("trailing-newline-dropped", "a\n", {}),
    ("two-trailing-newlines", "a\n\n", {}),
    ("crlf-normalized", "a\r\nb\rc\n", {}),
    ("comment", "a{# comment #}b", {}),
    ("comment-trim-blocks", "a{# c #}\nb", {}),
    ("comment-lstrip", "a\n   {# c #}\nb", {}),
    ("comment-dash", "a  {#- c -#}  b", {}),
    ("var-no-trim", "{{ 'x' }}\ny", {}),
    ("block-trim-newline", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("block-lstrip", "  {% if true %}\n  body\n  {% endif %}\nend", {}),
    ("lstrip-not-for-vars", "  {{ 'v' }}\n", {}),
    ("lstrip-text-before", "x {% if true %}y{% endif %}", {}),
    ("lstrip-tabs", "\t\t{% if true %}t{% endif %}\n", {}),
    ("plus-disables-lstrip", "  {%+ if true %}p{% endif %}", {}),
    ("plus-disables-trim", "{% if true +%}\nkeep{% endif %}", {}),
    ("dash-left", "a   \n  {%- if true %}b{% endif %}", {}),
    ("dash-right", "{% if true -%}   \n\n  b{% endif %}", {}),
    ("dash-var", "a  {{- 'b' -}}  \n c", {}),
    ("dash-both-lines", "[\n  {%- for i in [1,2] -%}\n  {{ i }}\n  {%- endfor -%}\n]", {}),
    ("trim-only-one-newline", "{% if true %}\n\nx{% endif %}", {}),
    ("lstrip-at-start", "   {% if true %}s{% endif %}", {}),
    ("lstrip-after-var-line", "{{ 'a' }}\n    {% if true %}b{% endif %}", {}),
    ("lstrip-after-block-same-line", "{% if true %}   {% if true %}x{% endif %}{% endif %}", {}),
    ("raw-block", "{% raw %}{{ not parsed }}{% endraw %}", {}),
    ("raw-block-dash", "a {%- raw -%}  {{ x }}  {%- endraw -%} b", {}),
    ("unicode-whitespace-strip", "a\u00a0\u3000{{- 'b' }}", {}),
    ("set-whitespace", "{% set x = 1 %}\n{% set y = 2 %}\n{{ x + y }}", {}),
    ("chatml-style", "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n'}}{% endfor %}",
     {"messages": [{"role": "user", "content": "hi"}]}),
    # --- literals and expressions
    ("int-float-literals", "{{ 1 }} {{ 1.5 }} {{ 1e3 }} {{ 1_000 }} {{ 0x1f }} {{ 0o17 }} {{ 0b101 }} {{ 2.5e-3 }}", {}),
    ("string-escapes", r"""{{ 'a\'b' }}|{{ "q\"q" }}|{{ 'tab\tnl\nbs\\' }}|{{ '\x41\u00e9\U0001F600' }}|{{ 'no\qescape' }}""", {}),
    ("adjacent-strings", "{{ 'a' 'b' \"c\" }}", {}),
    ("arithmetic", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 % 2 }} {{ -7.5 // 2 }}", {}),
    ("pow-left-assoc", "{{ 2 ** 3 ** 2 }} {{ -2 ** 2 }}", {}),
    ("unary", "{{ -x }} {{ +x }} {{ - -x }} {{ -x|abs }}", {"x": 3}),
    ("float-formatting", "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 1/3 }} {{ 2.0 }} {{ -0.0 }} {{ 1e300*1e10 }} {{ 123456789.123456789 }}", {}),
    ("concat-tilde", "{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ [1] }}", {}),
    ("string-plus", "{{ 'a' + 'b' }}", {}),
    ("string-plus-int-error", "{{ 'a' + 1 }}", {}),
    ("string-times", "{{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [1, 2] * 2 }}", {}),
    ("list-plus", "{{ [1] + [2, 3] }}", {}),
    ("bool-arith", "{{ true + true }} {{ 1 + true }} {{ 1 == 1.0 }} {{ true == 1 }}", {}),
    ("comparisons", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 'a' < 'b' }} {{ 1 != 1 }} {{ [1,2] == [1,2] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ (1,2) < (1,3) }} {{ [1] < [1,0] }}", {}),
    ("compare-mixed-error", "{{ 1 < 'a' }}", {}),
    ("logic", "{{ true and false }} {{ true or false }} {{ not true }} {{ 0 or 'x' }} {{ '' and 'y' }} {{ none or [] }} {{ 1 and 2 }}", {}),
    ("not-precedence", "{{ not 1 == 2 }} {{ not x is defined }} {{ not (true and false) }}", {}),
    ("in-operator", "{{ 'a' in 'cat' }} {{ 2 in [1,2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1,2] }} {{ 'z' not in 'abc' }} {{ none in [none] }}", {}),
    ("cond-expr", "{{ 'y' if true else 'n' }} {{ 'y' if false else 'n' }} {{ 'y' if false }}| {{ 1 if x else 2 if y else 3 }}", {"y": True}),
    ("list-dict-literals", "{{ [1, 'two', [3]] }} {{ {'a': 1, 'b': [2]} }} {{ () }} {{ (1,) }} {{ (1, 2) }} {{ [] }} {{ {} }} {{ [1, 2,] }}", {}),
    ("dict-key-types", "{{ {1: 'a', true: 'b', 1.0: 'c', none: 'n'} }}", {}),
    ("repr-strings", "{{ ['it\\'s', \"a\\\"b\", 'x\\ny', 'é', '\\x01', '\\u200b', 'back\\\\slash', '\\x7f', '\\u00a0'] }}", {}),
    ("repr-nested", "{{ {'a': [1, 2.5, none, true, {'b': ()}]} }} {{ [('a', 1)] }}", {}),
    ("print-none-bool", "{{ none }}|{{ true }}|{{ false }}|{{ None }}|{{ True }}", {}),
    # --- subscripts and slices
    ("subscript", "{{ xs[0] }} {{ xs[-1] }} {{ d['k'] }} {{ d.k }} {{ xs.1 }} {{ s[1] }} {{ s[-1] }}",
     {"xs": [10, 20, 30], "d": {"k": "v"}, "s": "héllo"}),
    ("slices", "{{ s[::-1] }}|{{ s[1:-1] }}|{{ s[::2] }}|{{ s[-2:] }}|{{ s[:0] }}|{{ s[10:] }}|{{ xs[1:] }}|{{ xs[:-1] }}|{{ xs[::-1] }}|{{ xs[::-2] }}|{{ xs[-100:100] }}|{{ xs[3:1] }}|{{ xs[3:1:-1] }}",
     {"s": "abcdef", "xs": [1, 2, 3, 4, 5]}),
    ("slice-step-zero-error", "{{ 'abc'[::0] }}", {}),
    ("slice-unicode", "{{ s[::-1] }}|{{ s|length }}|{{ s[0] }}", {"s": "cafe\u0301😀"}),
    ("missing-index-undefined", "[{{ xs[5] }}][{{ d['nope'] }}][{{ d.nope }}][{{ 'abc'[10] }}][{{ xs.x }}]", {"xs": [1], "d": {}}),
    ("attr-of-missing-errors", "{{ d.nope.deeper }}", {"d": {}}),
    ("attr-of-undefined-errors", "{{ nope.attr }}", {}),
    ("subscript-of-undefined-errors", "{{ nope[0] }}", {}),
    ("dict-attr-vs-method", "{{ d.items is callable }}|{{ d['items'] }}|{{ d.keys()|list }}|{{ d.b }}", {"d": {"items": "mine", "b": 2}}),
    ("none-attr", "[{{ n.x }}]", {"n": None}),
    # --- undefined behaviour
    ("undefined-print", "[{{ nope }}]", {}),
    ("undefined-attr-test", "{{ x is defined and x.y }} {{ d.y is defined }} {{ d.y.z is defined }}", {"d": {}}),
    ("undefined-tests", "{{ nope is defined }} {{ nope is undefined }} {{ nope is none }} {{ not nope }} {{ nope == nope }} {{ nope in [1] }} {{ 'a' in nope }} {{ nope|length }} {{ nope is iterable }}", {}),
    ("undefined-filters", "[{{ nope|default('d') }}][{{ nope|d('x') }}][{{ nope|trim }}][{{ nope|string }}][{{ nope|list }}][{{ nope|join(',') }}][{{ nope|upper }}][{{ nope|first }}][{{ nope|last }}][{{ nope|count }}][{{ nope|selectattr('x')|list }}][{{ nope|items|list }}]", {}),
    ("undefined-filter-int", "[{{ nope|int }}]", {}),
    ("undefined-filter-float", "[{{ nope|float }}]", {}),
    ("undefined-filter-lower", "[{{ nope|lower }}]", {}),
    ("undefined-filter-title", "[{{ nope|title }}]", {}),
    ("undefined-filter-capitalize", "[{{ nope|capitalize }}]", {}),
    ("undefined-filter-replace", "[{{ nope|replace('a', 'b') }}]", {}),
    ("undefined-filter-wordcount", "[{{ nope|wordcount }}]", {}),
    ("undefined-filter-indent", "[{{ nope|indent }}]", {}),
    ("undefined-filter-e", "[{{ nope|e }}]", {}),
    ("undefined-filter-safe", "[{{ nope|safe }}]", {}),
    ("undefined-filter-sort", "[{{ nope|sort }}]", {}),
    ("undefined-filter-unique", "[{{ nope|unique|list }}]", {}),
    ("undefined-filter-select", "[{{ nope|select|list }}]", {}),
    ("undefined-filter-map", "[{{ nope|map('upper')|list }}]", {}),
    ("undefined-filter-reverse", "[{{ nope|reverse|list }}]", {}),
    ("undefined-filter-batch", "[{{ nope|batch(2)|list }}]", {}),
    ("undefined-filter-dictsort", "[{{ nope|dictsort }}]", {}),
    ("undefined-filter-abs", "[{{ nope|abs }}]", {}),
    ("undefined-filter-round", "[{{ nope|round }}]", {}),
    ("undefined-filter-length", "[{{ nope|length }}]", {}),
    ("undefined-filter-tojson", "[{{ nope|tojson }}]", {}),
    ("undefined-filter-min", "[{{ nope|min }}]", {}),
    ("undefined-filter-sum", "[{{ nope|sum }}]", {}),
    ("undefined-concat", "{{ nope ~ 'x' }}", {}),
    ("undefined-plus-errors", "{{ nope + 'x' }}", {}),
    ("undefined-call-errors", "{{ nope() }}", {}),
    ("undefined-compare-errors", "{{ nope < 1 }}", {}),
    ("undefined-for", "{% for x in nope %}a{% else %}empty{% endfor %}", {}),
    ("undefined-tojson-errors", "{{ nope|tojson }}", {}),
    ("none-vs-undefined", "{{ n is none }} {{ n is defined }} {{ n|default('d') }} {{ n|default('d', true) }} {{ ''|default('e', true) }}", {"n": None}),
    # --- for loops
    ("loop-vars", "{% for a in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {"xs": ["a", "b", "c"]}),
    ("loop-prev-next-cycle", "{% for a in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('x','y') }}-{{ loop.depth }}-{{ loop.depth0 }},{% endfor %}", {}),
    ("loop-changed", "{% for a in [1,1,2,2,1] %}{{ loop.changed(a) }},{% endfor %}", {}),
    ("loop-filter", "{% for a in [1,2,3,4] if a is even %}{{ a }}:{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}", {}),
    ("loop-else", "{% for a in [] %}x{% else %}none{% endfor %}|{% for a in [1] if false %}x{% else %}filtered{% endfor %}", {}),
    ("loop-unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}", {"d": {"x": 1, "y": 2}}),
    ("loop-dict-iterates-keys", "{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("loop-string", "{% for c in 'héé' %}[{{ c }}]{% endfor %}", {}),
    ("loop-scoping", "{% set x = 5 %}{% for i in [1,2] %}[{{ x }}]{% set x = i %}[{{ x }}]{% endfor %}|{{ x }}", {}),
    ("loop-var-restored", "{% set i = 9 %}{% for i in [1,2] %}{{ i }}{% endfor %}{{ i }}", {}),
    ("loop-inner-var-not-leaking", "{% for i in [1,2] %}{% set inner = i %}{% endfor %}[{{ inner }}]", {}),
    ("nested-loops", "{% for a in [1,2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}{{ loop.depth }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("loop-outer-access", "{% for a in [1,2] %}{% set outer = loop %}{% for b in [3] %}{{ outer.index }}{{ loop.index }}{% endfor %}{% endfor %}", {}),
    ("break-continue", "{% for a in [1,2,3,4,5] %}{% if a == 2 %}{% continue %}{% endif %}{% if a == 4 %}{% break %}{% endif %}{{ a }}{% endfor %}", {}),
    ("loop-over-none-errors", "{% for a in n %}x{% endfor %}", {"n": None}),
    ("loop-over-int-errors", "{% for a in 5 %}x{% endfor %}", {}),
    ("loop-recursive", "{% for n in tree recursive %}{{ n.name }}{% if n.children %}({{ loop(n.children) }}){% endif %}{% endfor %}",
     {"tree": [{"name": "a", "children": [{"name": "b", "children": []}, {"name": "c"}]}, {"name": "d"}]}),
    ("loop-outside", "[{{ loop }}]", {}),
    # --- if / set / namespace / with
    ("if-elif-else", "{% for v in [1, 2, 3] %}{% if v == 1 %}one{% elif v == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    ("truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, none, 0.0] %}{{ 'T' if v else 'F' }}{% endfor %}", {}),
    ("set-tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}", {}),
    ("set-block", "{% set block %}  Hello {{ name }}  {% endset %}[{{ block }}]", {"name": "Ann"}),
    ("set-block-filter", "{% set block | trim | upper %}  Hello  {% endset %}[{{ block }}]", {}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for i in [1,2,3] %}{% set ns.count = ns.count + i %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }} [{{ ns.missing }}]", {}),
    ("namespace-from-dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}", {}),
    ("namespace-print", "{{ namespace(a=1) }}", {}),
    ("namespace-tojson-errors", "{{ namespace(a=1)|tojson }}", {}),
    ("set-attr-non-namespace-errors", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("with-block", "{% set x = 1 %}{% with x = 2, y = 3 %}{{ x }}{{ y }}{% endwith %}{{ x }}[{{ y }}]", {}),
    ("if-scoping", "{% if true %}{% set x = 'in-if' %}{% endif %}{{ x }}", {}),
    ("reassign-messages", "{% set messages = messages[1:] %}{{ messages|length }}", {"messages": [1, 2, 3]}),
    # --- macros and call
    ("macro-basic", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', greeting='Hi') }} {{ greet(name='Cy') }}", {}),
    ("macro-recursion", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
    ("macro-varargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k='v') }}", {}),
    ("macro-sees-globals", "{% set y = 6 %}{% macro m() %}{{ y }}{% endmacro %}{% set y = 7 %}{{ m() }}", {}),
    ("macro-call-block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 + 1 }}{% endcall %}", {}),
    ("macro-call-args", "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(item) each([1,2]) %}[{{ item }}]{% endcall %}", {}),
    ("macro-missing-arg", "{% macro m(a, b) %}[{{ a }}][{{ b }}]{% endmacro %}{{ m(1) }}", {}),
    ("macro-too-many-args-errors", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", {}),
    ("macro-returns-string", "{% macro m() %}  x  {% endmacro %}[{{ m()|trim }}][{{ m()|length }}]", {}),
    ("filter-block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}", {}),
    ("generation-tag", "{% generation %}gen {{ 1 }}{% endgeneration %}!", {}),
    # --- string methods
    ("str-methods", "{{ ' x '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ '\\n\\na\\n'.lstrip('\\n') }}|{{ 'abc'.upper() }}|{{ 'ABC'.lower() }}|{{ 'hello wORLD'.title() }}|{{ 'hello world'.capitalize() }}|{{ 'a-b-c'.replace('-', '+') }}|{{ 'a-b-c'.replace('-', '+', 1) }}", {}),
    ("str-split", "{{ 'a,b,,c'.split(',') }}|{{ '  a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'x</think>y</think>z'.split('</think>')[-1] }}|{{ 'abc'.split('z') }}|{{ 'a,b,c'.rsplit(',', 1) }}", {}),
    ("str-predicates", "{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith('bc') }} {{ 'abc'.startswith(('x', 'a')) }} {{ 'abc'.startswith('b', 1) }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }} {{ 'Ab'.islower() }} {{ 'AB'.isupper() }}", {}),
    ("str-find", "{{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count('l') }} {{ 'hello'.index('e') }}", {}),
    ("str-format", "{{ '{} and {}'.format(1, 'b') }}|{{ '{x}-{y}'.format(x=1, y=2) }}|{{ '{0}{0}'.format('ab') }}", {}),
    ("str-join-method", "{{ ', '.join(['a', 'b']) }}", {}),
    ("str-misc-methods", "{{ 'ab'.center(6, '*') }}|{{ 'ab'.ljust(4, '.') }}|{{ 'ab'.rjust(4) }}|{{ 'a\\nb'.splitlines() }}|{{ 'Hello'.swapcase() }}|{{ 'x'.zfill(3) }}|{{ 'abc'.removeprefix('a') }}|{{ 'abc'.removesuffix('c') }}", {}),
    ("str-method-on-list-errors", "{{ xs.startswith('a') }}", {"xs": ["a"]}),
    ("dict-methods", "{{ d.items()|list }}|{{ d.keys()|list }}|{{ d.values()|list }}|{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 9) }}|{{ d.get('b', {})|length }}", {"d": {"a": 1, "b": [2]}}),
    ("list-methods", "{{ xs.index(2) }} {{ xs.count(1) }}", {"xs": [1, 2, 1]}),
    ("append-is-unsafe", "{% set xs = [1] %}{{ xs.append(2) }}{{ xs }}", {}),
    ("dict-update-is-unsafe", "{% set d = {} %}{{ d.update({'a': 1}) }}", {}),
    ("underscore-attr-blocked", "[{{ ''.__class__ }}]", {}),
    # --- filters
    ("filter-trim-case", "{{ '  hi  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'hello'|upper }}|{{ 'HeLLo'|lower }}|{{ 'hello wORLD'|title }}|{{ 'hELLO'|capitalize }}|{{ \"they're bill's friends\"|title }}", {}),
    ("filter-length-count", "{{ 'héllo'|length }} {{ [1,2]|length }} {{ {'a': 1}|length }} {{ 'ab'|count }} {{ ''|length }}", {}),
    ("filter-replace", "{{ 'aXa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'abc'|replace('', '-') }}", {}),
    ("filter-join", "{{ [1, 2]|join }}|{{ ['a', 'b']|join(', ') }}|{{ [{'n': 'x'}, {'n': 'y'}]|join('/', attribute='n') }}|{{ 'abc'|join('.') }}", {}),
    ("filter-first-last", "{{ [1, 2]|first }} {{ [1, 2]|last }} {{ 'abc'|first }} {{ 'abc'|last }} [{{ []|first }}]", {}),
    ("filter-last-empty", "[{{ []|last }}]", {}),
    ("filter-default", "{{ nope|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ 0|d('z', boolean=true) }} {{ none|default('x') }}", {}),
    ("filter-string", "{{ 1|string }} {{ none|string }} {{ [1, 'a']|string }} {{ true|string }} {{ 1.0|string }} {{ (1 + 2)|string + 'x' }}", {}),
    ("filter-int-float", "{{ '3'|int }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(5) }} {{ '0x1A'|int(0, 16) }} {{ true|int }} {{ 3.9|int }} {{ -3.9|int }} {{ '3'|float }} {{ 3|float }} {{ 'x'|float }} {{ ' 42 '|int }} {{ '1e3'|float }} {{ '1_000'|int }}", {}),
    ("filter-list", "{{ 'abc'|list }} {{ {'a': 1, 'b': 2}|list }} {{ (1, 2)|list }} {{ range(3)|list }}", {}),
    ("filter-abs-round", "{{ -3|abs }} {{ -2.5|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.567|round(1, 'floor') }} {{ 2.511|round(1, 'ceil') }} {{ 42|round }} {{ 1.005|round(2) }} {{ -0.5|round }}", {}),
    ("filter-map", "{{ xs|map(attribute='a')|list }}|{{ [1, 2]|map('string')|list }}|{{ ['a', 'b']|map('upper')|join }}|{{ xs|map(attribute='a', default=0)|list }}", {"xs": [{"a": 1}, {"a": 2}, {"b": 3}]}),
    ("filter-select-reject", "{{ [1, 2, 3, 4]|select('even')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }} {{ [0, 1, '', 'a']|reject|list }} {{ [1, 5, 10]|select('gt', 3)|list }} {{ ['a', 'b']|select('in', 'abc')|list }}", {}),
    ("filter-selectattr", "{{ ms|selectattr('role', 'equalto', 'user')|list|length }} {{ ms|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }} {{ ms|selectattr('x')|list }} {{ ms|selectattr('x', 'defined')|list|length }} {{ ms|rejectattr('x', 'undefined')|list|length }}",
     {"ms": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "x": 1}, {"role": "user", "content": "c"}]}),
    ("filter-tojson", "{{ v|tojson }}", {"v": {"a": 1, "b": [1, 2.5, None, True, False, "é\"\n\u0001\u007f\u2028😀"], "c": {}, "d": [], "e": -0.0, "f": 1e20, "g": 9223372036854775807, "h": -9223372036854775808}}),
    ("filter-tojson-indent", "{{ v|tojson(indent=2) }}|{{ v|tojson(indent='\\t') }}|{{ 'x'|tojson(indent=2) }}|{{ []|tojson(indent=4) }}", {"v": {"a": 1, "b": [1, {}], "c": [], "d": {"e": None}}}),
    ("filter-tojson-args", "{{ v|tojson(separators=(',', ':')) }}|{{ v|tojson(sort_keys=true) }}|{{ v|tojson(ensure_ascii=true) }}", {"v": {"b": "é😀", "a": [1, 2]}}),
    ("filter-tojson-tuple-keys", "{{ {1: 'a', true: 'b', none: 'c', 1.5: 'd'}|tojson }} {{ (1, 2)|tojson }}", {}),
    ("filter-tojson-float-specials", "{{ (1e308 * 10)|tojson }} {{ 1.0|tojson }} {{ 0.1|tojson }}", {}),
    ("filter-items", "{{ d|items|list }} {% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("filter-items-non-mapping-errors", "{{ [1]|items|list }}", {}),
    ("filter-dictsort", "{{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ d|dictsort(by='value') }} {{ {'b': 1, 'A': 2, 'a': 3}|dictsort }} {{ {'b': 1, 'A': 2}|dictsort(true) }}", {"d": {"b": 1, "a": 3, "c": 2}}),
    ("filter-sort", "{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ ms|sort(attribute='n')|map(attribute='n')|list }} {{ [2.5, 1, 3]|sort }}", {"ms": [{"n": 2}, {"n": 1}]}),
    ("filter-unique", "{{ [1, 1, 2, 'a', 'A', 'a']|unique|list }} {{ ['a', 'A']|unique(case_sensitive=true)|list }}", {}),
    ("filter-batch", "{{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 'x')|list }}", {}),
    ("filter-wordcount", "{{ 'a b  c'|wordcount }} {{ ''|wordcount }} {{ 'one-two three'|wordcount }}", {}),
    ("filter-indent", "{{ 'a\\nb\\nc'|indent }}|{{ 'a\\nb\\n\\nc'|indent(2, true) }}|{{ 'a\\nb\\n\\nc'|indent(2, true, true) }}|{{ 'a\\nb'|indent(first=true) }}|{{ 'x'|indent('--', true) }}|{{ 'a\\n'|indent(2) }}", {}),
    ("filter-escape-safe", "{{ '<a href=\"x\">&\\'</a>'|e }}|{{ '<a>'|escape }}|{{ '<a>'|safe }}|{{ 5|e }}", {}),
    ("filter-min-max-sum", "{{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ [1, 2, 3]|sum }} {{ ms|sum(attribute='n') }} {{ ['b', 'A']|min }}", {"ms": [{"n": 2}, {"n": 5}]}),
    ("filter-reverse", "{{ 'abc'|reverse }} {{ [1, 2, 3]|reverse|list }}", {}),
    ("filter-center-truncate", "[{{ 'ab'|center(6) }}]", {}),
    ("filter-chain-precedence", "{{ '  a  ' ~ 'b'|upper }} {{ ('  a  ' ~ 'b')|trim }} {{ -1|abs + 1 }} {{ 'x' + 'y'|upper }}", {}),
    ("filter-unknown", "{{ 'x'|nosuchfilter }}", {}),
    ("filter-on-parenthesized", "{{ (xs|length - 1) }} {{ xs|length - 1 }} {{ (xs|map('upper')|list)[0] }}", {"xs": ["a", "b"]}),
    # --- tests
    ("tests", "{{ 1 is divisibleby 1 }} {{ 3 is divisibleby(2) }} {{ 2 is even }} {{ 3 is odd }} {{ 'a' is in 'abc' }} {{ 1 is eq 1 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 1 is le 1 }} {{ 2 is gt 1 }} {{ 2 is ge 3 }} {{ 1 is equalto 1 }} {{ 1 is sameas 1 }} {{ none is sameas none }}", {}),
    ("type-tests", "{{ true is boolean }} {{ 1 is boolean }} {{ true is number }} {{ 1.5 is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ true is integer }} {{ 'a' is string }} {{ 1 is string }} {{ none is none }} {{ {} is mapping }} {{ [] is mapping }}", {}),
    ("bool-tests", "{{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }} {{ none is false }}", {}),
    ("seq-tests", "{{ [] is sequence }} {{ 'a' is sequence }} {{ {} is sequence }} {{ 1 is sequence }} {{ {} is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ none is iterable }} {{ (1,) is sequence }}", {}),
    ("case-tests", "{{ 'a' is lower }} {{ 'A' is upper }} {{ 'aB' is lower }}", {}),
    ("callable-test", "{{ range is callable }} {{ 'x' is callable }} {{ ''.upper is callable }}", {}),
    ("test-not", "{{ 1 is not none }} {{ x is not defined }} {{ 'a' is not string }}", {}),
    ("test-in-expression", "{{ 'x' + 'y' is string }} {{ (1 + 2) is odd }}", {}),
    ("test-unknown", "{{ 1 is nosuchtest }}", {}),
    # --- globals
    ("range", "{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ range(0)|list }} {% for i in range(2) %}{{ i }}{% endfor %} {{ range(3)|length }} {{ (range(5)|list)[1:3] }} {{ range(3)[-1] }}", {}),
    ("range-too-big", "{{ range(1000000)|length }}", {}),
    ("dict-global", "{{ dict(a=1, b='x') }} {{ dict() }}", {}),
    ("raise-exception", "{{ raise_exception('Bad role: ' ~ role) }}", {"role": "tool"}),
    ("strftime-now", "{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %d, %Y') }}|{{ strftime_now('%A %a %j %I%p %y %%') }}", {}),

    # --- more whitespace-control and syntax combinations
    ("ws-nested-indented", "{% for m in ms %}\n    {% if m %}\n        [{{ m }}]\n    {% endif %}\n{% endfor %}\nend\n", {"ms": ["a", "", "b"]}),
    ("ws-dash-everywhere", "{%- for m in ms -%}\n  {{- m -}}\n  {%- if not loop.last -%}, {% endif -%}\n{%- endfor -%}\n", {"ms": [1, 2, 3]}),
    ("ws-mixed-var-block", "<{{ 'a' }}>\n  {%- if true %}\n  <{{ 'b' -}}  >\n  {% endif -%}\n  <c>", {}),
    ("ws-comment-lines", "a\n{# one #}\n  {#- two -#}\n   {# three #}\nb", {}),
    ("ws-raw-lstrip", "x\n    {% raw %}\n{{ y }}\n    {% endraw %}\nz", {}),
    ("ws-crlf-template", "{% if true %}\r\n  a\r\n{% endif %}\r\nb\r\n", {}),
    ("ws-string-with-crlf", "{{ 'a\r\nb' }}", {}),
    ("ws-tab-and-spaces-lstrip", " \t {% if true %}x{% endif %} \t \n", {}),
    ("ws-block-end-plus", "{% if true +%}\n  a{% endif +%}\nb", {}),
    ("ws-double-trailing", "a\n\n", {}),
    ("generation-ws", "{%- generation -%}\n  gen\n{%- endgeneration -%}\n!", {}),
    ("escapes-odd", r"""{{ '\101\7' }}|{{ '\é' }}|{{ 'a\
b' }}""", {}),
    ("unicode-identifier", "{% set café = 'ok' %}{{ café }}", {}),
    ("unicode-case", "{{ 'ß'|upper }} {{ 'ÉCOLE'|lower }} {{ 'ǆemal'.title() }} {{ 'ǉ'.capitalize() }}", {}),
    ("precedence-mix", "{{ 10 // 3 * 2 }} {{ 2 * 3 ** 2 }} {{ -3 ** 2 }} {{ 'a' ~ 1 + 2 }} {{ 1 ~ 2 * 3 }} {{ not 'a' in 'abc' }} {{ 1 in [1] == true }}", {}),
    ("concat-binds-tighter-than-plus", "{{ 1 + 2 ~ 3 }}", {}),
    ("cond-chain", "{{ 1 if false else 2 if false else 3 }} {{ 'x' if true }} {{ (1 if true else 2) + 1 }}", {}),
    ("postfix-chains", "{{ (1, 2)[0] }} {{ [1,2,3][1:][0] }} {{ 'abc'.upper()[1:] }} {{ d.get('a', {}).get('b', 'none') }} {{ {'k': [1, {'z': 'deep'}]}.k[1].z }}", {"d": {"a": {"b": "found"}}}),
    ("macro-default-refs-param", "{% macro m(a, b=a ~ '!') %}{{ a }}{{ b }}{% endmacro %}{{ m('x') }} {{ m('x', 'y') }}", {}),
    ("for-dictsort-unpack", "{% for k, v in d|dictsort %}{{ k }}={{ v }} {% endfor %}", {"d": {"b": 2, "a": 1}}),
    ("for-filter-dict", "{% for k in d if d[k] > 1 %}{{ k }}{% endfor %}", {"d": {"a": 1, "b": 2, "c": 3}}),
    ("loop-defined", "[{{ loop.index if loop is defined }}]{% for x in [1] %}[{{ loop.index if loop is defined }}]{% endfor %}", {}),
    ("namespace-list-accumulate", "{% set ns = namespace(items=[]) %}{% for i in range(3) %}{% set ns.items = ns.items + [i * i] %}{% endfor %}{{ ns.items }}", {}),
    ("set-in-loop-body-block", "{% for i in [1, 2] %}{% set s %}<{{ i }}>{% endset %}{{ s }}{% endfor %}[{{ s }}]", {}),
    ("sameas-tests", "{{ false is sameas false }} {{ 0 is sameas false }} {{ none is sameas none }}", {}),
    ("is-test-arg-forms", "{{ 9 is divisibleby 3 }} {{ 'b' is in ['a', 'b'] }} {{ 3 is gt(2) }} {{ x is eq 'v' }}", {"x": "v"}),
    ("messages-last-content", "{{ messages[-1]['content'] }}|{{ messages[0].role }}|{{ messages|length }}|{{ messages|map(attribute='role')|join(',') }}",
     {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
    ("tojson-message-roundtrip", "{{ messages|tojson }}|{{ messages[0]|tojson(indent=1) }}",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi \u00e9"}], "n": 1.0, "z": None}]}),
    ("string-compare-unicode", "{{ 'é' < 'z' }} {{ 'Z' < 'a' }} {{ 'e\u0301' == 'é' }} {{ 'abc' < 'abd' }} {{ '' < 'a' }}", {}),
    ("int-edge", "{{ 9223372036854775807 }} {{ -9223372036854775807 - 1 }} {{ 2 ** 62 }}", {}),
    ("float-int-mix", "{{ 1 + 1.0 }} {{ 3 * 0.5 }} {{ 7 % 2.5 }} {{ 2 ** 0.5 }} {{ 10 / 4 }} {{ 1e3|int }} {{ 5 // 2.0 }}", {}),
    ("filter-args-kw", "{{ 'a b'|replace(old='a', new='c') }}|{{ [3,1]|sort(reverse=True)|join(sep) }}|{{ 'x'|center(width=5) }}|", {"sep": "-"}),
    ("tool-calls-realistic", "{%- for tc in m.tool_calls -%}{%- if tc.function is defined %}{%- set tc = tc.function %}{% endif %}{{ tc.name }}({{ tc.arguments|tojson }}){% endfor %}",
     {"m": {"tool_calls": [{"function": {"name": "f", "arguments": {"x": 1, "y": [True, None]}}}, {"name": "g", "arguments": "{}"}]}}),
    # --- syntax errors (line numbers must match)
    ("syntax-unclosed-if", "{% if true %}\nyes\n", {}),
    ("syntax-unknown-tag", "a\n{% frobnicate %}", {}),
    ("syntax-bad-expression", "{{ 1 + }}", {}),
    ("syntax-unclosed-string", "{{ 'abc }}", {}),
    ("syntax-unclosed-var", "text {{ x ", {}),
    ("syntax-unbalanced-paren", "{{ (1 + 2 }}", {}),
    ("syntax-extra-rparen", "{{ 1 + 2) }}", {}),
    ("syntax-endfor-mismatch", "{% for x in y %}\n{% endif %}", {}),
    ("syntax-else-outside", "{% else %}", {}),
    ("syntax-missing-comment-end", "{# never closed", {}),
    ("syntax-do-tag-not-enabled", "{% do x %}", {}),
    ("syntax-include-unsupported", "{% include 'x.jinja' %}", {}),
    ("syntax-multiline-position", "line1\nline2 {{ ok }}\nline3 {% if %}", {}),
    ("syntax-assign-to-literal", "{% set 1 = 2 %}", {}),
    ("syntax-break-outside-loop", "{% break %}", {}),
]


def main():
    templates = {}
    for name, (bos, eos, source) in TEMPLATES.items():
        with open(os.path.join(TEMPLATES_DIR, name + ".jinja"), encoding="utf-8") as f:
            templates[name] = f.read()

    renders = []
    for name, (bos, eos, _) in TEMPLATES.items():
        for conv in CONVERSATIONS:
            result = render(ENV, templates[name], conversation_context(conv, bos, eos))
            renders.append({"template": name, "conversation": conv["name"], **result})

    cases = []
    for name, source, context in CASES:
        cases.append({"name": name, "template": source, "context": context, **render(ENV, source, context)})

    conv_path = os.path.join(FIXTURES, "conversations.json")
    with open(conv_path, "w", encoding="utf-8") as f:
        json.dump(CONVERSATIONS, f, ensure_ascii=False, indent=1)
        f.write("\n")

    out = {
        "oracle": "jinja2 %s, transformers' apply_chat_template environment" % jinja2.__version__,
        "now": NOW.isoformat(),
        "templates": {n: {"file": "templates/%s.jinja" % n, "bos_token": b, "eos_token": e, "source": src}
                      for n, (b, e, src) in TEMPLATES.items()},
        "renders": renders,
        "cases": cases,
    }
    out_path = os.path.join(FIXTURES, "chat_template_goldens.json")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    ok = sum(1 for r in renders if "output" in r)
    print("templates: %d, conversations: %d, renders: %d (%d rendered, %d errors), cases: %d (%d errors)" % (
        len(TEMPLATES), len(CONVERSATIONS), len(renders), ok, len(renders) - ok, len(cases),
        sum(1 for c in cases if "error" in c)))
    print("wrote", os.path.normpath(out_path), "and", os.path.normpath(conv_path))


if __name__ == "__main__":
    sys.exit(main())
