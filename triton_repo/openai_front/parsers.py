"""Nemotron 3's output formats: the reasoning split and Qwen3-Coder-style XML tool calls, streaming-safe.

Both parsers take text deltas (`push`) and return what is certain so far; `finish()` flushes the rest. The
non-streaming result is the same machinery on the whole text (`split_reasoning`, `parse_tool_calls`), so a
stream and a whole response always agree, wherever the deltas were split.

Reasoning (semantics of TensorRT-LLM's `nano-v3` / `nemotron-v3` parser and vLLM's `nemotron_v3`):
- `enable_thinking` true (Nemotron 3's default): the chat template ends the prompt with `<think>\\n`, so the
  output starts inside reasoning; `</think>` ends it (the tag itself is dropped) and the rest is content.
- A `<tool_call>` while reasoning ends it too (the model sometimes omits `</think>` before a call; TensorRT-LLM
  NVBug 6082303): reasoning stops before the tag and the tag starts the content, for the tool parser.
- Never closed: everything is reasoning and content is empty, unless `force_nonempty_content` (TensorRT-LLM's
  `chat_template_kwargs` name) moves the reasoning into content when content would be empty or blank.
- `enable_thinking` false: the template prefilled `<think></think>`, so the output is content; a `<think>` the
  model opens itself at the very start (after whitespace) is still split off as reasoning.
- A partial tag at the end of a delta is held back until the next delta decides it.

Tool calls (what the template tells the model to write, and `trtllm-serve --tool_parser qwen3_coder` /
vLLM `qwen3_xml` parse):

    <tool_call>
    <function=NAME>
    <parameter=P>
    VALUE
    </parameter>
    </function>
    </tool_call>

- Text outside the blocks is content; a partial `<tool_call>` tag is never leaked into content.
- One newline right after `<parameter=P>` and one right before `</parameter>` belong to the format, not to
  the value. Values are typed by the tool's JSON schema: `string` stays text (no JSON parsing of "007"),
  `integer` / `number` / `boolean` / `null` / `object` / `array` are parsed (JSON; Python literals as a
  fallback, as the upstream parsers do), and a value that does not parse as its type stays text.
  Parameters the schema does not know are parsed as JSON when they are JSON, else kept as text.
- A call naming a function that is not among the request's tools is not a call: its text stays content.
- Streaming emits a call's id and name as soon as `<function=NAME>` is complete, then its JSON arguments
  when `</tool_call>` arrives. A block still open at the end of the output (the length limit cut it) is
  emitted with the parameters completed so far.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

THINK, END_THINK, TOOL_CALL, END_TOOL_CALL = "<think>", "</think>", "<tool_call>", "</tool_call>"
_FUNCTION_RE = re.compile(r"<function=([^>\n]*)>")
_PARAM_RE = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>", re.DOTALL)


def _partial_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `tags` (0 if none)."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


@dataclass
class Split:
    """Reasoning and content text (deltas from `push`, or whole texts from `split_reasoning`)."""

    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    """Streaming reasoning / content split (see the module docstring)."""

    def __init__(self, *, enable_thinking: bool = True, force_nonempty_content: bool = False) -> None:
        self.state = "reasoning" if enable_thinking else "start"
        self.force_nonempty_content = force_nonempty_content
        self.buf = ""
        self.reasoning = ""  # everything emitted so far, for the force_nonempty_content fallback
        self.content = ""

    def _emit(self, reasoning: str = "", content: str = "") -> Split:
        self.reasoning += reasoning
        self.content += content
        return Split(reasoning, content)

    def push(self, delta: str) -> Split:
        self.buf += delta
        out = Split()
        while self.buf:
            if self.state == "content":
                part, self.buf = self.buf, ""
                out.content += self._emit(content=part).content
            elif self.state == "start":  # thinking off: only a leading <think> opens reasoning
                head = self.buf.lstrip()
                if head.startswith(THINK):
                    self.buf = head[len(THINK) :]
                    self.state = "reasoning"
                elif head and THINK.startswith(head) or not head:
                    break  # undecided: all whitespace, or a partial <think>
                else:
                    self.state = "content"
            else:  # reasoning
                ends = [(i, tag) for tag in (END_THINK, TOOL_CALL) if (i := self.buf.find(tag)) >= 0]
                if ends:
                    i, tag = min(ends)
                    out.reasoning += self._emit(reasoning=self.buf[:i]).reasoning
                    self.buf = self.buf[i + len(END_THINK) :] if tag == END_THINK else self.buf[i:]
                    self.state = "content"
                    continue
                hold = _partial_suffix(self.buf, (END_THINK, TOOL_CALL))
                part, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold :]
                out.reasoning += self._emit(reasoning=part).reasoning
                break
        return out

    def finish(self) -> Split:
        """The held-back tail, plus the `force_nonempty_content` fallback."""
        rest, self.buf = self.buf, ""
        out = self._emit(reasoning=rest) if self.state == "reasoning" else self._emit(content=rest)
        if self.force_nonempty_content and not self.content.strip() and self.reasoning:
            out.content += self.reasoning  # streamed: the reasoning is repeated as the content
            self.content += self.reasoning
        return out


def split_reasoning(
    text: str, *, enable_thinking: bool = True, force_nonempty_content: bool = False
) -> Split:
    """(reasoning, content) of a whole output; equal to streaming it through `ReasoningParser`."""
    p = ReasoningParser(enable_thinking=enable_thinking, force_nonempty_content=force_nonempty_content)
    p.push(text)
    p.finish()
    if force_nonempty_content and p.content == p.reasoning and p.reasoning:
        return Split("", p.content)  # the whole response: the reasoning moved, not repeated
    return Split(p.reasoning, p.content)


# ----------------------------------------------------------------------------------------------------------
# tool calls


def _schema_types(schema: dict | None) -> list[str]:
    if not isinstance(schema, dict):
        return []
    t = schema.get("type")
    types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            types += [x for x in _schema_types(sub) if x not in types]
    if not types and "enum" in schema:
        types = ["string"] if all(isinstance(v, str) for v in schema["enum"]) else []
    return types


def _literal(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return ast.literal_eval(raw)  # Python spellings: True / None / single quotes


def _as_type(raw: str, t: str) -> Any:
    """`raw` converted to JSON-schema type `t`; ValueError when it is not one."""
    if t == "string":
        return raw
    if t == "integer":
        return int(raw.strip())
    if t == "number":
        v = float(raw.strip())
        return int(v) if v.is_integer() and re.fullmatch(r"[+-]?\d+", raw.strip()) else v
    if t == "boolean":
        low = raw.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise ValueError(raw)
    if t == "null":
        if raw.strip().lower() in ("null", "none"):
            return None
        raise ValueError(raw)
    try:
        v = _literal(raw.strip())
    except (ValueError, SyntaxError) as e:
        raise ValueError(raw) from e
    if (t == "object" and isinstance(v, dict)) or (t == "array" and isinstance(v, list)):
        return v
    raise ValueError(raw)


def convert_value(raw: str, schema: dict | None) -> Any:
    """A parameter's text typed by its JSON schema (see the module docstring)."""
    types = _schema_types(schema)
    if not types:
        try:
            return json.loads(raw.strip())
        except ValueError:
            return raw
    for t in sorted(types, key=lambda t: t == "string"):  # non-string types first, text as the fallback
        try:
            return _as_type(raw, t)
        except (ValueError, TypeError, SyntaxError):
            continue
    return raw


def _param_value(body: str) -> str:
    if body.startswith("\n"):
        body = body[1:]
    if body.endswith("\n"):
        body = body[:-1]
    return body


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict = field(default_factory=dict)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_openai(self, index: int | None = None) -> dict:
        d = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json},
        }
        return d if index is None else {"index": index, **d}


@dataclass
class ToolDelta:
    """What one `push` produced: content text and tool-call events.

    `calls` holds (index, id, name, arguments): a new call carries id and name with arguments "" (or the
    whole arguments when it opened and closed in one delta); a finished call carries its arguments only.
    """

    content: str = ""
    calls: list[tuple[int, str | None, str | None, str]] = field(default_factory=list)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Streaming parser of `<tool_call>` blocks in the content (see the module docstring).

    `tools` are OpenAI tool definitions ([{"type": "function", "function": {"name", "parameters"}}]);
    `prefilled` is the part of a block the prompt already opened (tool_choice required / named).
    """

    def __init__(self, tools: list[dict], *, prefilled: str = "") -> None:
        self.schemas: dict[str, dict] = {}
        for t in tools or []:
            fn = t.get("function", t) if isinstance(t, dict) else {}
            if isinstance(fn, dict) and fn.get("name"):
                self.schemas[fn["name"]] = fn.get("parameters") or {}
        self.buf = ""
        self.in_call = False
        self.block = ""  # text of the open block after <tool_call>
        self.announced: ToolCall | None = None  # the open block's call, once its name was emitted
        self.calls: list[ToolCall] = []
        if prefilled:
            if not prefilled.startswith(TOOL_CALL):
                raise ValueError(f"a prefilled tool call must start with {TOOL_CALL!r}")
            self.in_call, self.block = True, prefilled[len(TOOL_CALL) :]

    def _arguments(self, name: str, body: str) -> dict:
        props = (self.schemas.get(name) or {}).get("properties") or {}
        return {
            m.group(1).strip(): convert_value(_param_value(m.group(2)), props.get(m.group(1).strip()))
            for m in _PARAM_RE.finditer(body)
        }

    def push(self, delta: str) -> ToolDelta:
        self.buf += delta
        out = ToolDelta()
        while True:
            if not self.in_call:
                i = self.buf.find(TOOL_CALL)
                if i < 0:
                    hold = _partial_suffix(self.buf, (TOOL_CALL,))
                    out.content += self.buf[: len(self.buf) - hold]
                    self.buf = self.buf[len(self.buf) - hold :]
                    return out
                out.content += self.buf[:i]
                self.buf = self.buf[i + len(TOOL_CALL) :]
                self.in_call, self.block, self.announced = True, "", None
                continue
            self.block += self.buf
            self.buf = ""
            if self.announced is None:
                head = self.block.lstrip()
                m = _FUNCTION_RE.match(head)
                if m is None:
                    prefix = "<function="
                    undecided = (
                        prefix.startswith(head)
                        if len(head) < len(prefix)
                        else head.startswith(prefix) and "\n" not in head and ">" not in head
                    )
                    if undecided:
                        return out
                    self._not_a_call(out)  # no function header: plain text
                    continue
                name = m.group(1).strip()
                if name not in self.schemas:
                    self._not_a_call(out)
                    continue
                self.announced = ToolCall(new_call_id(), name)
                out.calls.append((len(self.calls), self.announced.id, name, ""))
            end = self.block.find(END_TOOL_CALL)
            if end < 0:
                return out
            body, self.buf = self.block[:end], self.block[end + len(END_TOOL_CALL) :]
            self._close(body, out)

    def _close(self, body: str, out: ToolDelta) -> None:
        call = self.announced
        assert call is not None
        call.arguments = self._arguments(call.name, body)
        index = len(self.calls)
        self.calls.append(call)
        new = out.calls and out.calls[-1][0] == index
        if new:  # opened and closed within this delta: one event with everything
            out.calls[-1] = (index, call.id, call.name, call.arguments_json)
        else:
            out.calls.append((index, None, None, call.arguments_json))
        self.in_call, self.block, self.announced = False, "", None

    def _not_a_call(self, out: ToolDelta) -> None:
        """The open block is not a call of a known tool: its text goes back to content."""
        text = TOOL_CALL + self.block
        self.in_call, self.block, self.announced = False, "", None
        # re-scan after the tag (a later <tool_call> may be real)
        out.content += TOOL_CALL
        self.buf = text[len(TOOL_CALL) :] + self.buf

    def finish(self) -> ToolDelta:
        out = ToolDelta()
        if self.in_call and self.announced is not None:
            self._close(self.block, out)  # cut off by the length limit: the parameters completed so far
        elif self.in_call:
            out.content += TOOL_CALL + self.block
            self.in_call, self.block = False, ""
        out.content += self.buf
        self.buf = ""
        return out


def parse_tool_calls(text: str, tools: list[dict], *, prefilled: str = "") -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole output; equal to streaming it through `ToolCallParser`."""
    p = ToolCallParser(tools, prefilled=prefilled)
    a, b = p.push(text), p.finish()
    return a.content + b.content, p.calls


# ----------------------------------------------------------------------------------------------------------
# both together: what the chat endpoint streams


class ChatOutputParser:
    """Model output deltas -> OpenAI chat deltas (`reasoning_content`, `content`, `tool_calls`).

    The reasoning split runs first; its content goes through the tool-call parser when the request has tools.
    """

    def __init__(
        self,
        *,
        enable_thinking: bool = True,
        force_nonempty_content: bool = False,
        tools: list[dict] | None = None,
        prefilled: str = "",
    ) -> None:
        self.reasoning = ReasoningParser(
            enable_thinking=enable_thinking, force_nonempty_content=force_nonempty_content
        )
        self.tools = ToolCallParser(tools, prefilled=prefilled) if tools else None

    @property
    def calls(self) -> list[ToolCall]:
        return self.tools.calls if self.tools is not None else []

    def _deltas(self, split: Split, final: bool) -> list[dict]:
        out: list[dict] = []
        if split.reasoning:
            out.append({"reasoning_content": split.reasoning})
        if self.tools is None:
            if split.content:
                out.append({"content": split.content})
            return out
        td = self.tools.push(split.content)
        if final:
            rest = self.tools.finish()
            td = ToolDelta(td.content + rest.content, td.calls + rest.calls)
        if td.content:
            out.append({"content": td.content})
        for index, cid, name, args in td.calls:
            call: dict[str, Any] = {"index": index}
            if cid is not None:
                call.update(id=cid, type="function", function={"name": name, "arguments": args})
            else:
                call["function"] = {"arguments": args}
            out.append({"tool_calls": [call]})
        return out

    def push(self, delta: str) -> list[dict]:
        return self._deltas(self.reasoning.push(delta), final=False)

    def finish(self) -> list[dict]:
        return self._deltas(self.reasoning.finish(), final=True)


def parse_chat_output(
    text: str,
    *,
    enable_thinking: bool = True,
    force_nonempty_content: bool = False,
    tools: list[dict] | None = None,
    prefilled: str = "",
) -> tuple[str, str, list[ToolCall]]:
    """(reasoning, content, tool calls) of a whole output (the non-streaming response)."""
    split = split_reasoning(
        text, enable_thinking=enable_thinking, force_nonempty_content=force_nonempty_content
    )
    if not tools:
        return split.reasoning, split.content, []
    content, calls = parse_tool_calls(split.content, tools, prefilled=prefilled)
    return split.reasoning, content, calls
