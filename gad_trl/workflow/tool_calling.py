"""Teacher trajectories through the OpenAI tool-calling API: `gad-trl generate-teacher --tools module:function,...`.

`resolve_tools("pkg.mod:fn,...")` imports the named functions; `tool_schemas(functions)` builds the request's
`tools` list with `transformers.utils.get_json_schema` (what TRL uses: each function needs type hints and a
Google-style docstring with an `Args:` entry per argument). `record_trajectory` runs the loop for one prompt:

1. send the messages and the tools (`gad_trl.workflow.openai_chat.chat_turn`: the HTTP retries, the per-attempt
   deadline and the malformed-answer retries of `chat`);
2. an assistant message with `tool_calls`: run each call here, in this process (its `arguments` JSON-decoded), append
   the assistant message (`role`, `content`, `tool_calls` with `id`, `type`, `function{name, arguments}` - the
   arguments as the JSON string the endpoint sent) and one `{"role": "tool", "tool_call_id", "name", "content"}`
   message per call (`content` is `str(result)`), and go to 1;
3. an assistant message without tool calls is the final answer: the trajectory is complete.

A tool call that cannot be run or fails - arguments that are not a JSON object, a tool name not in `--tools`, an
exception, no result within `tool_timeout` seconds - does not end the trajectory: as in TRL's tool loop, the model
gets `str({"error": "..."})` as that call's result and carries on. A run past `max_tool_calls` calls ends the
prompt with `ToolCallLimitError` (its row is listed as failed: no trajectory without a final answer is written).

The timeout stops *waiting*: each call runs in a daemon worker thread, and a Python thread cannot be killed, so a
tool that hangs keeps its thread (and whatever it holds) until it returns or the process exits. Tools that can hang
for good should have their own timeouts (or run their work in a subprocess). A result longer than
`max_tool_result_chars` characters is cut to that length, with a note saying so (`cap_tool_result`): a tool that
returns megabytes would otherwise be sent back in every following request.

Training applies the same two limits (`GADConfig.tool_timeout`, `GADConfig.max_tool_result_chars`) to the student's
tools: `ToolLimits.wrap` wraps each callable TRL's tool loop calls, so a call past the timeout raises and TRL hands
the model its `{"error": ...}` result (counted in `tools/failure_frequency`, and in `tools/timeouts`).

The trajectory (`TrajectoryResult.messages`: the messages after the prompt, ending with the final assistant answer)
is in the shape `gad_trl.data.normalize_trajectory` accepts, i.e. what the trainer reads as a teacher trajectory.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOOL_CALLS = 8
DEFAULT_TOOL_TIMEOUT = 30.0  # seconds; `generate-teacher --tool_timeout` and `GADConfig.tool_timeout`
DEFAULT_MAX_TOOL_RESULT_CHARS = 20_000  # ~5k tokens; `--max_tool_result_chars`, `GADConfig.max_tool_result_chars`


class ToolSpecError(ValueError):
    """A `--tools` entry that does not name a usable function."""


class ToolCallLimitError(RuntimeError):
    """The teacher asked for more tool calls than `max_tool_calls` for one prompt."""


class ToolTimeoutError(TimeoutError):
    """A tool call gave no result within the timeout (its thread may still be running)."""


@dataclass
class TrajectoryResult:
    messages: list[dict]  # after the prompt: assistant turns with tool_calls, tool results, the final answer
    finish_reason: str | None  # of the final assistant turn
    tool_calls: int  # calls run


def parse_tool_specs(specs) -> list[str]:
    """`"a.b:f, c:g"` (or a list of such strings, e.g. from a YAML config) as `["a.b:f", "c:g"]`."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for spec in specs:
        if not isinstance(spec, str):
            raise ToolSpecError(f"--tools: {spec!r} is not a 'module:function' string.")
        out.extend(part.strip() for part in spec.split(",") if part.strip())
    return out


def resolve_tool(spec: str):
    """The callable a `module:function` spec names (`gad_trl.preflight.import_callable`; `function` may be dotted)."""
    from ..preflight import ImportPathError, import_callable

    try:
        return import_callable(spec, "--tools")
    except ImportPathError as err:
        raise ToolSpecError(str(err)) from err


def resolve_tools(specs) -> list:
    """The functions of `--tools` (comma-separated `module:function` specs), in order; names must be unique."""
    functions = [resolve_tool(spec) for spec in parse_tool_specs(specs)]
    if not functions:
        raise ToolSpecError("--tools names no function; expected 'module:function[,module:function...]'.")
    return functions


def tool_schemas(functions) -> list[dict]:
    """The request's `tools`: `{"type": "function", "function": {name, description, parameters}}` per function,
    from `transformers.utils.get_json_schema` (its `return` entry is left out: it is not part of the API)."""
    from transformers.utils import get_json_schema

    schemas, seen = [], set()
    for fn in functions:
        label = getattr(fn, "__qualname__", None) or repr(fn)
        try:
            schema = get_json_schema(fn)
        except Exception as err:  # noqa: BLE001 - DocstringParsingException, TypeHintParsingException, ...
            raise ToolSpecError(
                f"Tool {label!r}: cannot build its JSON schema ({type(err).__name__}: {err}). A tool needs type hints "
                "on every argument and a Google-style docstring with a description and an 'Args:' entry per "
                "argument (what transformers.utils.get_json_schema reads)."
            ) from err
        function = {k: v for k, v in schema["function"].items() if k != "return"}
        if function["name"] in seen:
            raise ToolSpecError(f"--tools names two functions called {function['name']!r}; tool names must be unique.")
        seen.add(function["name"])
        schemas.append({"type": "function", "function": function})
    return schemas


def tool_table(functions) -> dict:
    """`{name: function}` under the names the schemas give the model."""
    return {schema["function"]["name"]: fn for schema, fn in zip(tool_schemas(functions), functions)}


def call_with_timeout(fn, kwargs: dict, timeout: float | None):
    """`fn(**kwargs)` in a daemon thread; `ToolTimeoutError` when it has not returned after `timeout` seconds (the
    thread is left running: Python threads cannot be killed)."""
    box = {}

    def target():
        try:
            box["result"] = fn(**kwargs)
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            box["error"] = err

    thread = threading.Thread(target=target, name=f"tool-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ToolTimeoutError(f"no result after {timeout:g} s (tool_timeout)")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def cap_tool_result(text: str, max_chars: int | None) -> str:
    """`text`, or its first `max_chars` characters and a note giving the full length and the setting."""
    if max_chars is None or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[... cut: the tool returned {len(text)} characters, max_tool_result_chars={max_chars}]"


class ToolLimits:
    """The time limit and the result cap on the student's tool calls during training. `wrap(fn)` is `fn` (sync or
    async, same name, signature and docstring) bounded by them; `timeouts` and `cut_results` count what they
    stopped."""

    def __init__(self, timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                 max_result_chars: int | None = DEFAULT_MAX_TOOL_RESULT_CHARS):
        self.timeout = timeout
        self.max_result_chars = max_result_chars
        self.timeouts = 0
        self.cut_results = 0
        self._warned: set[str] = set()

    def _timed_out(self, name: str, err: BaseException) -> ToolTimeoutError:
        self.timeouts += 1
        if name not in self._warned:  # once per tool: every timeout is counted in tools/timeouts
            self._warned.add(name)
            logger.warning(f"Tool {name} gave no result within tool_timeout={self.timeout:g} s: the model gets an "
                           "error result and the rollout carries on (the call's thread keeps running in the "
                           "background). Raise tool_timeout if the tool needs longer, or give the tool its own timeout. "
                           "Further timeouts are counted in tools/timeouts, not logged.")
        return ToolTimeoutError(f"Tool {name} timed out: {err}.")

    def _capped(self, result):
        if isinstance(result, list):  # multimodal content blocks: passed through, as TRL does
            return result
        text = str(result)  # what TRL puts in the tool message
        capped = cap_tool_result(text, self.max_result_chars)
        self.cut_results += capped is not text
        return capped

    def wrap(self, fn):
        if getattr(fn, "_gad_tool_limits", None) is self:
            return fn
        name = getattr(fn, "__name__", "tool")
        if inspect.iscoroutinefunction(fn):
            import asyncio

            @functools.wraps(fn)
            async def bounded(**kwargs):
                try:
                    result = await asyncio.wait_for(fn(**kwargs), self.timeout)
                except asyncio.TimeoutError as err:
                    raise self._timed_out(name, f"no result after {self.timeout:g} s (tool_timeout)") from err
                return self._capped(result)
        else:

            @functools.wraps(fn)
            def bounded(**kwargs):
                try:
                    result = call_with_timeout(fn, kwargs, self.timeout)
                except ToolTimeoutError as err:
                    raise self._timed_out(name, err) from None
                return self._capped(result)

        bounded._gad_tool_limits = self
        return bounded


def run_tool_call(call: dict, tools: dict, timeout: float | None,
                  max_result_chars: int | None = DEFAULT_MAX_TOOL_RESULT_CHARS) -> str:
    """The `content` of the tool message answering `call`: `str(result)`, or `str({"error": ...})` (TRL's shape)
    when the call cannot be run, raises or times out."""
    name = call["function"]["name"]
    arguments = call["function"].get("arguments")
    try:
        if name not in tools:
            raise LookupError(f"Tool {name} not found (tools: {sorted(tools)}).")
        try:
            kwargs = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else (arguments or {})
        except json.JSONDecodeError as err:
            raise ValueError(f"the arguments of {name} are not valid JSON ({err}): {arguments!r}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"the arguments of {name} must be a JSON object, got {type(kwargs).__name__}")
        return cap_tool_result(str(call_with_timeout(tools[name], kwargs, timeout)), max_result_chars)
    except ToolTimeoutError as err:
        return str({"error": f"Tool {name} timed out: {err}."})
    except Exception as err:  # noqa: BLE001 - the model sees the error and carries on, as in TRL
        return str({"error": f"{type(err).__name__}: {err}"})


def record_trajectory(client, model: str, messages: list[dict], tools: dict, schemas: list[dict],
                      max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS, tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                      max_retries: int | None = None,
                      max_tool_result_chars: int | None = DEFAULT_MAX_TOOL_RESULT_CHARS, **params) -> TrajectoryResult:
    """The teacher's trajectory for the prompt `messages` (see the module docstring); `params` as `chat`'s."""
    from .openai_chat import chat_turn

    conversation = list(messages)
    trajectory: list[dict] = []
    calls_run = 0
    while True:
        turn = chat_turn(client, model, conversation, tools=schemas, max_retries=max_retries, **params)
        if not turn.tool_calls:
            final = {"role": "assistant", "content": turn.content or ""}
            trajectory.append(final)
            return TrajectoryResult(messages=trajectory, finish_reason=turn.finish_reason, tool_calls=calls_run)
        if calls_run + len(turn.tool_calls) > max_tool_calls:
            raise ToolCallLimitError(
                f"the teacher asked for more than {max_tool_calls} tool calls (--max_tool_calls) without a final "
                f"answer (calls so far: {calls_run}, asked next: {[c['function']['name'] for c in turn.tool_calls]})"
            )
        for i, call in enumerate(turn.tool_calls):  # an endpoint that sends no ids: unique ones, for the replies
            call["id"] = call["id"] or f"call_{calls_run + i}"
        assistant = {"role": "assistant", "content": turn.content or "", "tool_calls": turn.tool_calls}
        results = []
        for call in turn.tool_calls:
            results.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                            "content": run_tool_call(call, tools, tool_timeout, max_tool_result_chars)})
            calls_run += 1
        trajectory.extend([assistant, *results])
        conversation.extend([assistant, *results])
