"""Replay of past student completions as extra negatives for the discriminator (`discriminator_replay_buffer_size`).

The co-trained discriminator only ever sees the *current* student's samples, so it forgets the mistakes the student
made earlier and may rank them anywhere, and the student can drift back into them unpunished (the suite measured a
negative discriminator-judge correlation on the starting student's samples). Keeping a uniform sample of every
earlier completion and mixing a few of them into each update is the GAN remedy for this forgetting (the "history of
refined images" of Shrivastava et al., 2017). Replayed pairs only train the discriminator: rewards are the current
completions' scores.

Two ways to mix them in (`discriminator_replay_mode`): "add" trains on the current pairs plus the replayed ones;
"replace" leaves as many current completions (drawn at random, `ReplayBuffer.leave_out`) out of the loss as it
replays, so each update trains on as many student negatives as without replay ("persistent negatives", arXiv
2609.30864). The left-out completions are still scored, without a graph, for their rewards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class ReplayPair:
    """One past (teacher sequence, student sequence) pair, prompt included, with where each response starts."""

    teacher: list[int]
    student: list[int]
    teacher_start: int
    student_start: int


class ReplayBuffer:
    """A uniform sample (reservoir sampling) of at most `capacity` pairs out of every pair ever added.

    Uniform over the whole history rather than a FIFO of the latest steps: old mistakes keep their share however long
    the run. Seeded, and `state_dict()` holds the RNG states, so a resumed run replays exactly what an uninterrupted
    one would have. `leave_out` (replace mode) draws from a second RNG of its own, so the buffer's contents and draws
    are the same in both modes at the same seed: an add / replace comparison differs only in the left-out pairs.
    """

    def __init__(self, capacity: int, seed: int):
        if capacity < 0:
            raise ValueError(f"The replay buffer's capacity must be >= 0, got {capacity}.")
        self.capacity = capacity
        self.pairs: list[ReplayPair] = []
        self.seen = 0
        self._rng = random.Random(seed)
        self._leave_out_rng = random.Random(f"leave_out-{seed}")  # str seeds are hashed with sha512: reproducible

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, k: int) -> list[ReplayPair]:
        """`min(k, len(self))` distinct pairs drawn uniformly."""
        k = min(k, len(self.pairs))
        return self._rng.sample(self.pairs, k) if k > 0 else []

    def leave_out(self, num_current: int, k: int) -> list[int]:
        """`k` distinct indices out of `range(num_current)`, drawn uniformly, in increasing order: the current
        completions a replace-mode update leaves out of its loss."""
        if not 0 <= k <= num_current:
            raise ValueError(f"Cannot leave out {k} of {num_current} current completions.")
        return sorted(self._leave_out_rng.sample(range(num_current), k)) if k > 0 else []

    def add(self, pairs: list[ReplayPair]) -> None:
        for pair in pairs:
            self.seen += 1
            if len(self.pairs) < self.capacity:
                self.pairs.append(pair)
            else:
                slot = self._rng.randrange(self.seen)  # keep the new pair with probability capacity / seen
                if slot < self.capacity:
                    self.pairs[slot] = pair

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "pairs": [(p.teacher, p.student, p.teacher_start, p.student_start) for p in self.pairs],
            "rng": self._rng.getstate(),
            "leave_out_rng": self._leave_out_rng.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"The checkpoint's replay buffer holds up to {state['capacity']} pairs but this run's "
                f"discriminator_replay_buffer_size is {self.capacity}: resume with the same size."
            )
        self.seen = state["seen"]
        self.pairs = [ReplayPair(list(t), list(s), ts, ss) for t, s, ts, ss in state["pairs"]]
        self._rng.setstate(_as_rng_state(state["rng"]))
        if "leave_out_rng" in state:  # absent from checkpoints written before replace mode (which never drew from it)
            self._leave_out_rng.setstate(_as_rng_state(state["leave_out_rng"]))


def _as_rng_state(state):
    # random.Random.setstate needs tuples; a state that went through torch.save/load (weights_only) may come back as
    # lists.
    version, internal, gauss = state
    return version, tuple(internal), gauss
