"""A local OpenAI-compatible chat server (127.0.0.1 only) that answers deterministically and injects faults on demand.

`FaultServer(responder)` serves `GET /health`, `GET /v1/models` and `POST /v1/chat/completions`. The answer to a
request is `responder(messages)`; `plan[prompt] = [fault, ...]` makes the successive requests for the prompt whose
last user message is `prompt` misbehave, one fault per request, then answer normally:

- `"429"`: HTTP 429 with `Retry-After: <retry_after>` seconds; `"500"`: HTTP 500;
- `"hang"`: say nothing for `hang_seconds` (bounded), then close; `"drop"`: close the connection without a response;
- `"trickle"`: HTTP 200 headers, then one byte of the body every `trickle_interval` seconds for up to
  `trickle_seconds` (the body is never finished): every socket read gets data in time, so only a deadline on the
  whole request ends it; `trickle_ends` records when the server noticed the client had gone (or gave up);
- `"malformed"`: HTTP 200, `application/json`, a body that is not JSON; `"400"`: HTTP 400 (not retried);
- `"always500"`: HTTP 500 on every request for that prompt; `"echo401"`: HTTP 401 whose body echoes the request's
  Authorization header (as some proxies do), on every request.
- `"emptychoice"`: a normal answer whose last choice is an empty string (an answer the trainer would reject).
`delay` slows every normal answer (for kill tests).

The API's `n` (several choices per request): `n_mode="support"` answers `n` choices, like vLLM; `"ignore"` answers
one choice whatever `n` asks; `"reject"` answers HTTP 400 to a request with `n` > 1 (logged as fault `"reject_n"`).
Choice texts: `responder(messages)`, with ` (sample S)` appended when the request has a `seed` (S = seed + choice
index, as vLLM seeds its n samples) and ` (choice i)` for choices i > 0 without a seed - so a request without `n` or
`seed` gets exactly `responder(messages)`. Like vLLM's server, `GET /v1/models` lists `root` (the model it
was started from; default `model`) and `POST /tokenize` answers `{"tokens": tokenize(prompt)}` (404 when `tokenize`
is None). `log` records `(time, prompt, fault)` per request, `requests` the request bodies and `authorizations` their
Authorization headers.

vLLM's dev-mode endpoints, as far as the claim of a training run needs them (`gad_trl.vllm.server_claim`): `GET
/server_info` names `worker_extension_cls` (default none), and `POST /collective_rpc` runs the extension's `gad_claim`
on `workers` real `GADWorkerExtension` instances (several: a tensor-parallel server) when `worker_extension_cls` is set
(HTTP 500 otherwise, as vLLM answers for a method its workers lack).

Tool calling: a responder may return a message instead of a text, `{"content": ..., "tool_calls": [...]}` (OpenAI
format; finish_reason "tool_calls"); `tool_script(...)` builds one that calls tools on its first turns and answers
once it has read their results. With tools, `prompt` is still the last *user* message (the later requests of a
conversation end with `tool` messages).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def echo_upper(messages: list[dict]) -> str:
    return "ANSWER " + messages[-1]["content"].upper()


def last_user_content(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1].get("content"))


def tool_script(turns, forever=None, final=None):
    """A responder that calls tools: turn i (counting the assistant tool-call turns since the last user message) calls
    `turns[i]`, a list of `(name, arguments)` (arguments a dict, or a raw string sent as is - e.g. bad JSON); after
    the scripted turns it answers `final(messages)` (default: "FINAL " + the tool results joined by " | ").
    `forever=(name, arguments)`: call that tool on every turn, never answering."""

    def respond(messages):
        since_user = []
        for m in messages:
            since_user = [] if m.get("role") == "user" else [*since_user, m]
        done = sum(1 for m in since_user if m.get("role") == "assistant" and m.get("tool_calls"))
        if forever is not None or done < len(turns):
            calls = [forever] if forever is not None else turns[done]
            return {"content": "", "tool_calls": [
                {"id": f"call_{done}_{i}", "type": "function",
                 "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                for i, (name, args) in enumerate(calls)]}
        if final is not None:
            return final(messages)
        return "FINAL " + " | ".join(m["content"] for m in since_user if m.get("role") == "tool")

    return respond


class FaultServer:
    def __init__(self, responder=echo_upper, model="fault-teacher", delay=0.0, retry_after="1", hang_seconds=3.0,
                 trickle_interval=0.3, trickle_seconds=60.0, root=None, tokenize=None, n_mode="support",
                 worker_extension_cls=None, workers=1):
        if n_mode not in ("support", "ignore", "reject"):
            raise ValueError(f"n_mode must be support, ignore or reject, got {n_mode!r}")
        self.responder = responder
        self.n_mode = n_mode
        self.model = model
        self.root = root or model
        self.tokenize = tokenize
        self.worker_extension_cls = worker_extension_cls
        from gad_trl.vllm.worker_extension import GADWorkerExtension

        self.workers = [GADWorkerExtension() for _ in range(workers)]
        self.delay = delay
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.trickle_interval = trickle_interval
        self.trickle_seconds = trickle_seconds
        self.trickle_ends: list[tuple[float, str]] = []  # (time, "client closed" | "gave up")
        self.plan: dict[str, list[str]] = {}
        self.log: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body: bytes, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self):
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.flush()
                end = time.monotonic() + server.trickle_seconds
                outcome = "gave up"
                while time.monotonic() < end and not server.stopping.wait(server.trickle_interval):
                    try:
                        self.wfile.write(b" ")  # JSON whitespace: a body that is never finished
                        self.wfile.flush()
                    except OSError:  # the client closed the connection
                        outcome = "client closed"
                        break
                with server.lock:
                    server.trickle_ends.append((time.monotonic(), outcome))

            def do_GET(self):
                if self.path.rstrip("/") == "/health":
                    return self._send(200, b"")
                if self.path.split("?")[0].rstrip("/") == "/server_info":
                    info = {"parallel_config": {"worker_extension_cls": server.worker_extension_cls or ""}}
                    return self._send(200, json.dumps(info).encode())
                if self.path.rstrip("/").endswith("/models"):
                    body = {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "test",
                                                        "root": server.root, "parent": None, "max_model_len": 512}]}
                    return self._send(200, json.dumps(body).encode())
                self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                if self.path.rstrip("/") == "/collective_rpc":
                    if not server.worker_extension_cls or request.get("method") != "gad_claim":
                        return self._send(500, b'{"error": "no such method on the workers"}')
                    with server.lock:
                        results = [w.gad_claim(**request.get("kwargs", {})) for w in server.workers]
                    return self._send(200, json.dumps({"results": results}).encode())
                if self.path.rstrip("/").endswith("/tokenize"):
                    with server.lock:
                        server.requests.append(request)
                    if server.tokenize is None:
                        return self._send(404, b'{"detail": "Not Found"}')
                    tokens = server.tokenize(request["prompt"])
                    return self._send(200, json.dumps({"tokens": tokens, "count": len(tokens)}).encode())
                messages = request["messages"]
                prompt = last_user_content(messages)
                with server.lock:
                    queue = server.plan.get(prompt, [])
                    fault = queue[0] if queue else "ok"
                    if queue and fault not in ("always500", "echo401"):
                        queue.pop(0)
                    n = request.get("n") or 1
                    if fault == "ok" and n > 1 and server.n_mode == "reject":
                        fault = "reject_n"
                    server.log.append((time.monotonic(), prompt, fault))
                    server.requests.append(request)
                    server.authorizations.append(self.headers.get("Authorization"))
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}',
                                      {"Retry-After": server.retry_after})
                if fault in ("500", "always500"):
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if fault == "echo401":
                    echoed = {"error": {"message": f"invalid credentials: Authorization: {self.headers.get('Authorization')}"}}
                    return self._send(401, json.dumps(echoed).encode())
                if fault == "400":
                    return self._send(400, b'{"error": {"message": "bad request"}}')
                if fault == "reject_n":
                    return self._send(400, b'{"error": {"message": "n > 1 is not supported"}}')
                if fault == "hang":
                    server.stopping.wait(server.hang_seconds)
                    self.close_connection = True
                    return
                if fault == "trickle":
                    return self._trickle()
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"message": ')
                if server.delay:
                    time.sleep(server.delay)
                base = server.responder(messages)
                if isinstance(base, dict):  # an assistant message (tool calls): one choice, as is
                    calls = base.get("tool_calls") or None
                    message = {"role": "assistant", "content": base.get("content"), "tool_calls": calls}
                    body = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": server.model,
                            "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop",
                                         "message": message}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                    return self._send(200, json.dumps(body).encode())
                seed = request.get("seed")
                texts = [base if seed is None and i == 0 else
                         base + (f" (sample {seed + i})" if seed is not None else f" (choice {i})")
                         for i in range(1 if server.n_mode == "ignore" else n)]
                if fault == "emptychoice":
                    texts[-1] = ""
                body = {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": server.model,
                    "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                                for i, t in enumerate(texts)],
                    "usage": {"prompt_tokens": 1, "completion_tokens": sum(len(t.split()) for t in texts),
                              "total_tokens": 1 + sum(len(t.split()) for t in texts)},
                }  # fmt: skip
                self._send(200, json.dumps(body).encode())

        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def faults_for(self, prompt: str) -> list[str]:
        return [fault for _, p, fault in self.log if p == prompt]

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# The default review prompt of gad_trl.workflow.judge, parsed back: (question, Assistant 1's answer, Assistant 2's answer).
REVIEW = re.compile(r"\[Question\]\n(.*?)\n\n\[The Start of Assistant 1's Answer\]\n(.*?)\n\n"
                    r"\[The End of Assistant 1's Answer\]\n\n\[The Start of Assistant 2's Answer\]\n(.*?)\n\n"
                    r"\[The End", re.S)


def scripted_judge(review_for):
    """Judge server responder: reference answers are 'REFERENCE <question>', reviews come from `review_for`."""

    def respond(messages):
        match = REVIEW.search(messages[-1]["content"])
        if match is None:
            return "REFERENCE " + messages[-1]["content"]
        return review_for(*match.groups())

    return respond
