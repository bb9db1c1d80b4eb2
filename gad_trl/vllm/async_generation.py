"""One-step-off generation for server-mode vLLM (`GADConfig.async_generation`).

A synchronous GAD step leaves the vLLM server idle while the trainer updates the discriminator and the policy, and the
trainer idle while the server generates. With `async_generation=True` the next generation batch's prompts are sent
to the server in the background right after the weights are synced for the current batch, so the server generates
batch t+1 (with the weights of step t) while the trainer trains on batch t. At step t+1 the trainer waits for that
request (if it is still running), pushes the new weights, and trains on the completions of batch t+1, which are then
exactly one optimizer step stale. TRL's importance-sampling correction (`vllm_importance_sampling_correction`) already
weighs each token by the ratio of the learner's to the sampler's probability, which is what a stale sampler needs.
Rewards stay learner-time: the (current, pre-update) discriminator scores the batch when it is trained on.

Pieces:
- `Lookahead`: wraps the trainer's epoch iterator so the next generation batch can be read before its turn; the
  order of batches is unchanged (the wrapper only pulls items early).
- `PrefetchingClient`: stands in for TRL's `VLLMClient` on the main process. `generate` returns the prefetched result
  when the request is the one prefetched (same prompt ids, same sampling settings), else asks the server as before;
  every other use of the client (weight sync, cache reset, reload RPC) first waits for the background request, so the
  server never receives weights while it is generating for the trainer.
- `OneStepOffGeneration`: the trainer-side bookkeeping (when to launch, staleness, metrics).

Only the HTTP request runs in the background thread; every collective operation (gathering the prompts of all
processes) runs on the training thread at the same point on every process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future

from accelerate.utils import broadcast_object_list, gather_object

from ..redact import redacted_exception

__all__ = ["Lookahead", "OneStepOffGeneration", "PrefetchingClient"]


class Lookahead:
    """An iterator over `iterator`'s items that can look ahead without changing what it yields, or in which order."""

    HISTORY = 64  # positions of recently yielded items (identity), to locate the batch being trained

    def __init__(self, iterator):
        self.iterator = iterator
        self.buffer: deque = deque()
        self.yielded = 0
        self._positions: dict[int, int] = {}
        self._recent: deque = deque()
        self.exhausted = False

    def __iter__(self):
        return self

    def __next__(self):
        item = self.buffer.popleft() if self.buffer else next(self.iterator)
        self._positions[id(item)] = self.yielded
        self._recent.append(item)  # keeps the object alive, so its id is not reused while it is remembered
        if len(self._recent) > self.HISTORY:
            old = self._recent.popleft()
            self._positions.pop(id(old), None)
        self.yielded += 1
        return item

    def position_of(self, item) -> int | None:
        """The position (0-based, in yield order) of an item this iterator yielded recently, else None."""
        return self._positions.get(id(item))

    def peek(self, position: int):
        """The item at `position` (yield order) without consuming it; None when the iterator ends before it."""
        ahead = position - self.yielded
        if ahead < 0:
            return None
        while len(self.buffer) <= ahead:
            if self.exhausted:
                return None
            try:
                self.buffer.append(next(self.iterator))
            except StopIteration:
                self.exhausted = True
                return None
        return self.buffer[ahead]


class _Pending:
    def __init__(self, key, launched_at_step: int):
        self.key = key
        self.launched_at_step = launched_at_step
        self.future: Future = Future()
        self.waited = 0.0  # seconds the training thread blocked on it (in a weight sync or in `generate`)


def request_key(prompts, features, sampling: dict):
    """What makes two generation requests the same: prompt ids, (no) image features, sampling settings."""
    return (tuple(tuple(p) for p in prompts), features is None, repr(sorted(sampling.items())))


class PrefetchingClient:
    """A `VLLMClient` stand-in holding at most one background `generate` request (module docstring).

    `on_error(exc)` turns an exception raised by the background request into the error to raise on the training
    thread (the generation backend's `VLLMServerError` naming the server and the fix)."""

    def __init__(self, client, on_error=None):
        self.__dict__["_client"] = client
        self.__dict__["_on_error"] = on_error
        self.__dict__["_pending"] = None
        self.__dict__["last_hit"] = None  # (launched_at_step, seconds waited) of the last prefetched result used

    # ------------------------------------------------------------------ background request
    def submit(self, prompts, sampling: dict, launched_at_step: int) -> None:
        self.settle()  # at most one request in flight
        pending = _Pending(request_key(prompts, None, sampling), launched_at_step)
        client = self._client

        def run():
            try:
                pending.future.set_result(client.generate(prompts=prompts, features=None, **sampling))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the training thread by `_result`
                pending.future.set_exception(exc)

        # A daemon thread: a request still running when the process exits (a crashed run) does not keep it alive.
        threading.Thread(target=run, name="gad-async-generation", daemon=True).start()
        self.__dict__["_pending"] = pending

    @property
    def pending(self) -> _Pending | None:
        return self._pending

    def _result(self, pending: _Pending):
        start = time.perf_counter()
        try:
            return pending.future.result()
        except Exception as exc:
            error = self._on_error(exc) if self._on_error is not None else None
            if error is None:
                raise
            raise error from redacted_exception(exc)  # (its message may name the server's URL)
        finally:
            pending.waited += time.perf_counter() - start

    def settle(self) -> None:
        """Wait for the background request to finish (its result is kept for `generate`); raise its error."""
        pending = self._pending
        if pending is None:
            return
        try:
            self._result(pending)
        except BaseException:
            self.__dict__["_pending"] = None  # reported once; the run fails here
            raise

    def discard(self) -> None:
        """Forget the background request (end of training, or a batch that will not be trained on)."""
        self.__dict__["_pending"] = None

    # ------------------------------------------------------------------ the VLLMClient interface
    def generate(self, prompts, features=None, **sampling):
        pending = self._pending
        if pending is not None and pending.key == request_key(prompts, features, sampling):
            self.__dict__["_pending"] = None
            result = self._result(pending)
            # The wait mostly happened already, in the weight sync before this call (`settle`).
            self.__dict__["last_hit"] = (pending.launched_at_step, pending.waited)
            return result
        self.settle()  # another request (evaluation, a batch the prefetch did not foresee): in turn, not alongside
        return self._client.generate(prompts=prompts, features=features, **sampling)

    def __getattr__(self, name):
        self.settle()
        return getattr(self._client, name)

    def __setattr__(self, name, value):
        setattr(self._client, name, value)


def sampling_params(vllm_generation, num_generations: int) -> dict:
    """The sampling settings TRL's `VLLMGeneration.generate` sends in server mode (trl 1.16), so that a prefetched
    request is the request TRL would have made."""
    g = vllm_generation
    return {
        "n": num_generations,
        "repetition_penalty": g.repetition_penalty,
        "temperature": g.temperature,
        "top_p": g.top_p,
        "top_k": g.top_k,
        "min_p": 0.0 if g.min_p is None else g.min_p,
        "max_tokens": g.max_completion_length,
        "logprobs": g.logprobs,
        "structured_outputs_regex": g.structured_outputs_regex,
        "generation_kwargs": g.generation_kwargs,
    }


class OneStepOffGeneration:
    """Trainer-side one-step-off generation: launches the next generation batch, and reports how stale each trained
    batch was. Built by `GADTrainer` when `args.async_generation` is set (server mode only)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.accelerator = trainer.accelerator
        self.lookahead: Lookahead | None = None
        self.client: PrefetchingClient | None = None
        generation = trainer.vllm_generation
        if self.accelerator.is_main_process:
            on_error = None
            if hasattr(generation, "_server_died"):
                def on_error(exc):
                    from .generation import VLLMServerError

                    if isinstance(exc, VLLMServerError):
                        return exc
                    return generation._server_died("generating the next batch in the background (async_generation)",
                                                   exc)
            self.client = PrefetchingClient(generation.vllm_client, on_error)
            generation.vllm_client = self.client
        self.current_batch = None  # the generation batch whose inputs are being prepared

    # ------------------------------------------------------------------ data
    def wrap(self, epoch_iterator):
        """The epoch iterator the trainer reads (`Trainer.get_batch_samples`), wrapped once per epoch so the next
        batch can be read early."""
        if self.lookahead is None or self.lookahead.iterator is not epoch_iterator:
            self.lookahead = Lookahead(epoch_iterator)
        return self.lookahead

    # ------------------------------------------------------------------ launch
    @property
    def generate_every(self) -> int:
        """Micro-steps between two generations (TRL's `_prepare_inputs`)."""
        return self.trainer.args.steps_per_generation * self.trainer.num_iterations

    def before_prepare(self, batch) -> None:
        """`_prepare_inputs` of a training micro-step, on every process: remember its batch; on a micro-step that
        reuses buffered completions (no generation, so no `after_generation`) launch from here."""
        t = self.trainer
        self.current_batch = batch
        if not (t._step % self.generate_every == 0 or t._buffered_inputs is None):
            self.maybe_launch(batch)

    def after_generation(self, metrics: dict) -> None:
        """A training generation just returned, on every process: log it, then launch the next one."""
        self.record(metrics)
        self.maybe_launch(self.current_batch)

    def maybe_launch(self, current_batch) -> None:
        """Called on every process at the same micro-step, after the current batch's inputs are prepared: send the
        next generation batch when the optimizer step that follows is the last one before it is needed."""
        t = self.trainer
        ga = t.args.gradient_accumulation_steps
        generate_every = self.generate_every
        cycle = t._step % generate_every  # micro-steps since this batch was generated
        if cycle != max(generate_every - ga, 0):
            return  # launch in the optimizer step right before the next generation: staleness stays one step
        # The next generation's global step: after the optimizer steps left in this cycle.
        next_generation_step = t.state.global_step + -(-(generate_every - cycle) // ga)
        if next_generation_step >= t.state.max_steps:
            return  # nothing will train on it
        position = self.lookahead.position_of(current_batch) if self.lookahead is not None else None
        upcoming = None
        if position is not None:
            upcoming = self.lookahead.peek(position + generate_every - cycle)
        local = self._prompt_ids(upcoming) if upcoming is not None else None
        # Every process takes part in the gather; a process without a next batch (end of epoch) stops the launch.
        gathered = gather_object([local])
        if any(ids is None for ids in gathered):
            return
        if t.state.global_step != t._last_loaded_step:  # the server must sample from this step's weights
            t.vllm_generation.sync_weights()
            t._last_loaded_step = t.state.global_step
        all_prompts = [ids for per_process in gathered for ids in per_process]
        n = t.num_generations
        if self.client is not None:
            self.client.submit(all_prompts[::n], sampling_params(t.vllm_generation, n), t.state.global_step)

    def _prompt_ids(self, batch) -> list[list[int]] | None:
        prompts = [row["prompt"] for row in batch]
        prompt_ids, images, _ = self.trainer._tokenize_prompts(prompts)
        if images is not None:
            return None  # image prompts go through the server's feature path: generated in turn
        return [list(ids) for ids in prompt_ids]

    # ------------------------------------------------------------------ consume
    def record(self, metrics: dict) -> None:
        """After a training generation: log whether it came from the background request, how stale it was (optimizer
        steps between the weights that sampled it and the weights that train on it) and how long the trainer waited."""
        hit = None
        if self.client is not None:
            hit, self.client.__dict__["last_hit"] = self.client.last_hit, None
        if self.accelerator.num_processes > 1:
            box = [hit]
            broadcast_object_list(box, from_process=0)
            hit = box[0]
        step = self.trainer.state.global_step
        if hit is None:
            metrics["async_generation/staleness"].append(0.0)
            metrics["async_generation/prefetched"].append(0.0)
            metrics["async_generation/wait_time"].append(0.0)
        else:
            launched_at, waited = hit
            metrics["async_generation/staleness"].append(float(step - launched_at))
            metrics["async_generation/prefetched"].append(1.0)
            metrics["async_generation/wait_time"].append(float(waited))

    def close(self) -> None:
        """End of `train()`: forget any request in flight (nothing trains on it; a checkpoint never holds it)."""
        if self.client is not None:
            self.client.discard()
        self.lookahead = None
        self.current_batch = None
