"""One chat completion from an OpenAI-compatible endpoint (OpenAI, a vLLM server, TGI), through the `openai` client.

Failure policy (tested against a local fault-injecting server, tests/workflow/test_teacher.py):
- HTTP 429 / 408 / 409 / 5xx, a dropped connection, a request attempt over `timeout` seconds in all (connecting,
  sending, waiting and reading the whole answer, however slowly the server sends it: `gad_trl.workflow.deadline`; its
  connection is closed): retried by the `openai` client itself, up to `max_retries` times, waiting what a
  `Retry-After` (or `retry-after-ms`) header asks for (up to the client's 120 s cap; a longer `Retry-After` is not
  retried), else exponential backoff (0.5 s doubling, at most 8 s, with jitter). The deadline is per attempt: the
  retries' waits and attempts come on top of it.
- A 200 answer that is not a chat completion (malformed JSON, no `choices`, no text): retried here with the same
  backoff, up to `max_retries` times.
- Anything else (400, 401, 404, ...): not retried.
The error that remains after the retries is raised; callers record it against the row.
`chat_choices` asks for several answers in one request (the API's `n`); what to do when an endpoint lacks `n` is the
caller's choice (`gad_trl.workflow.teacher` falls back to one request per answer). `chat_turn` sends `tools` and
returns the assistant turn with its `tool_calls` (`gad_trl.workflow.tool_calling` runs the loop); retried as `chat`.

The API key is read from the environment variable named by the caller and handed to the client only: never logged,
never written to a file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# vLLM and TGI accept any key unless started with one; the client refuses to run without one.
NO_KEY = "EMPTY"


class MalformedResponseError(RuntimeError):
    """The endpoint answered 200 but not with a usable chat completion."""


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    completion_tokens: int | None


@dataclass
class ChatTurn:
    """One assistant turn of a tool-calling conversation: text (None when the endpoint sent none) and tool calls as
    `{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}` (an empty list: a final answer;
    `id` None where the endpoint sent none)."""

    content: str | None
    tool_calls: list[dict]
    finish_reason: str | None


def make_client(base_url: str, api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 600.0,
                max_retries: int = 5):
    """An `openai.OpenAI` client for `base_url`; the key comes from `$api_key_env` (unset: none, for local servers).

    `timeout`: total seconds per request attempt (not per socket read, as the `openai` client's own timeout); an
    attempt over it is abandoned and retried like any timeout."""
    try:
        import openai
    except ImportError as err:
        raise ImportError(
            "The `openai` client is needed to talk to OpenAI-compatible endpoints: pip install 'gad_trl[workflow]'."
        ) from err

    from ..redact import check_api_key_env

    check_api_key_env(api_key_env, "api_key_env")  # a key given as the name: refused, never logged
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if not api_key:
        logger.info("No API key in $%s: sending none (fine for a local vLLM/TGI server).", api_key_env)
    from .deadline import deadline_http_client

    return openai.OpenAI(base_url=base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=max_retries,
                         http_client=deadline_http_client(timeout))


def resolve_model(client, model: str | None) -> str:
    """`model`, or the endpoint's only model when None (a vLLM server serves one; its id is the path it loaded)."""
    if model:
        return model
    ids = [m.id for m in client.models.list()]
    if len(ids) != 1:
        raise ValueError(
            f"The endpoint {client.base_url} serves {len(ids)} models ({ids[:10]}); name the one to use with --model."
        )
    return ids[0]


def _backoff(attempt: int) -> float:
    # Same schedule as the openai client's own retries.
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


def chat(client, model: str, messages: list[dict], max_retries: int | None = None, **params) -> ChatResult:
    """One chat completion; `params` are sampling parameters (None values are not sent) and `extra_body`."""
    return _create(client, model, messages, max_retries, params, _parse)


def chat_choices(client, model: str, messages: list[dict], n: int = 1, max_retries: int | None = None,
                 **params) -> list[ChatResult]:
    """`n` chat completions of one prompt in one request (the API's `n`), in choice-index order; retried as `chat`.

    `n` is only sent when > 1, so `n=1` is exactly the request `chat` sends. An endpoint without `n` may reject it
    (HTTP 400/422, raised) or ignore it and answer with fewer choices: the caller checks `len(result) < n`.
    Each result's `completion_tokens` is None when n > 1 (the usage covers all choices together)."""
    if n > 1:
        params = {**params, "n": n}
    return _create(client, model, messages, max_retries, params, _parse_all)


def chat_turn(client, model: str, messages: list[dict], tools: list[dict] | None = None,
              max_retries: int | None = None, **params) -> ChatTurn:
    """One assistant turn for `messages` with the OpenAI `tools` list (sent when not empty); retried as `chat`. A
    choice with neither text nor tool calls is a malformed answer (retried)."""
    if tools:
        params = {**params, "tools": tools}
    return _create(client, model, messages, max_retries, params, _parse_turn)


def _create(client, model, messages, max_retries, params, parse):
    import openai

    params = {k: v for k, v in params.items() if v is not None}
    retries = client.max_retries if max_retries is None else max_retries
    for attempt in range(retries + 1):
        try:
            response = client.chat.completions.create(model=model, messages=messages, **params)
            return parse(response)
        except (MalformedResponseError, json.JSONDecodeError, openai.APIResponseValidationError) as err:
            if attempt == retries:
                raise MalformedResponseError(f"malformed response after {retries + 1} attempt(s): {err}") from err
            logger.debug("Malformed response (%s); retrying.", err)
            time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def _choices(response) -> list:
    choices = getattr(response, "choices", None)
    if isinstance(response, str) or not choices:
        raise MalformedResponseError(f"no choices in the response: {str(response)[:200]!r}")
    return choices


def _choice_text(choice, which: str) -> str:
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise MalformedResponseError(f"the {which} choice has no text content: {str(choice)[:200]!r}")
    return text


def _parse(response) -> ChatResult:
    choice = _choices(response)[0]
    text = _choice_text(choice, "first")
    usage = getattr(response, "usage", None)
    tokens = getattr(usage, "completion_tokens", None)
    return ChatResult(text=text, finish_reason=getattr(choice, "finish_reason", None),
                      completion_tokens=tokens if isinstance(tokens, int) else None)


def _parse_turn(response) -> ChatTurn:
    choice = _choices(response)[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    raw_calls = getattr(message, "tool_calls", None) or []
    if not raw_calls and not isinstance(content, str):
        raise MalformedResponseError(f"the first choice has neither text nor tool calls: {str(choice)[:200]!r}")
    calls = []
    for i, call in enumerate(raw_calls):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        arguments = getattr(function, "arguments", None)
        if not isinstance(name, str) or not name:
            raise MalformedResponseError(f"tool call {i} has no function name: {str(call)[:200]!r}")
        if arguments is None:
            arguments = "{}"
        elif not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        call_id = getattr(call, "id", None)
        calls.append({"id": call_id if isinstance(call_id, str) and call_id else None, "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    return ChatTurn(content=content if isinstance(content, str) else None, tool_calls=calls,
                    finish_reason=getattr(choice, "finish_reason", None))


def _parse_all(response) -> list[ChatResult]:
    choices = _choices(response)
    if len(choices) == 1:
        return [_parse(response)]
    # Servers list choices in index order, but nothing in the API promises it: sort by `index` where all have one.
    if all(isinstance(getattr(c, "index", None), int) for c in choices):
        choices = sorted(choices, key=lambda c: c.index)
    return [ChatResult(text=_choice_text(c, f"index-{i}"), finish_reason=getattr(c, "finish_reason", None),
                       completion_tokens=None) for i, c in enumerate(choices)]


def rejected_request(err: BaseException) -> bool:
    """HTTP 400/422: the endpoint refused the request itself (e.g. a parameter it does not know), not a passing fault."""
    import openai

    return isinstance(err, (openai.BadRequestError, openai.UnprocessableEntityError))


def describe_error(err: BaseException, *clients) -> str:
    """A one-line description of a request error for the errors file and the console. An endpoint may echo the
    request (its Authorization header included) in its error body: the `clients`' API keys and any bearer token are
    masked before the text is written or printed."""
    from ..redact import redact_values

    status = getattr(err, "status_code", None)
    text = f"{type(err).__name__}: {err}"
    if status is not None and str(status) not in text:
        text = f"HTTP {status} {text}"
    keys = [getattr(c, "api_key", None) for c in clients if c is not None]
    return redact_values(text.replace("\n", " "), [k for k in keys if k and k != NO_KEY])[:500]


def map_bounded(fn, items, concurrency: int, desc: str, initial: int = 0, total: int | None = None,
                size=None, unit: str = "row"):
    """Yield `(item, result, error)` for `fn(item)` over `items`, at most `concurrency` in flight, in finishing order.

    Results are yielded in the calling thread (so the caller can write them without a lock), under a tqdm bar with
    rate and ETA; `initial` counts items already done by an earlier run. `items` is read lazily, as room frees up.
    `size(item)`: how many `unit`s an item counts for on the bar (default 1).
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm.auto import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}.")
    if total is None and hasattr(items, "__len__"):
        total = initial + len(items)
    items = iter(items)
    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running = {}

        def fill():
            for item in items:
                running[pool.submit(fn, item)] = item
                if len(running) >= concurrency:
                    return

        fill()
        try:
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = running.pop(future)
                    error = future.exception()
                    yield item, (None if error else future.result()), error
                    bar.update(1 if size is None else size(item))
                fill()
        finally:
            for future in running:
                future.cancel()
            bar.close()
