"""When a live migration converges, steps up, switches to post-copy or gives up. Pure.

AHV's rule, which this follows: copy memory in iterations (at most 50); let the guest
pause only when what is left fits the stun window (max downtime, 300 ms); start with a
shorter window and widen it step by step, so a guest that converges anyway pays little;
slow a guest that dirties memory faster than the link copies (QEMU's auto-converge CPU
throttle, requested at start: see ``ahvlite.virt.migration`` for why it cannot be
switched on mid-job); optionally finish in post-copy; otherwise abort with "failed to
converge after N iterations" and leave the guest running where it was.

Everything is decided from the job-stat samples polled so far (``JobSample``) and the
settings passed in; nothing here reads a clock or talks to libvirt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ahvlite.errors import InvalidSpec
from ahvlite.virt.migration import JobSample, MigrationOptions


@dataclass(frozen=True)
class ConvergenceSettings:
    max_downtime_ms: int = 300  # the cap: the longest pause the guest may see
    initial_downtime_ms: int = 50  # the first window (clamped to the cap)
    downtime_steps: int = 5  # windows from initial to the cap, evenly spaced
    iterations_per_step: int = 2  # widen the window after this many iterations
    max_iterations: int = 50
    timeout_s: float | None = 600.0
    # "No progress": over this many finished iterations, what is left to copy at the
    # start of an iteration shrank by less than progress_min_pct.
    stall_iterations: int = 3
    progress_min_pct: float = 10.0
    auto_converge: bool = True
    auto_converge_initial_pct: int = 20
    auto_converge_increment_pct: int = 10
    postcopy: bool = False  # allow switching to post-copy when stalled at the cap
    bandwidth_mib_s: int | None = None
    poll_interval_s: float = 0.25

    def __post_init__(self) -> None:
        positive = {"max_downtime_ms": self.max_downtime_ms,
                    "initial_downtime_ms": self.initial_downtime_ms,
                    "downtime_steps": self.downtime_steps,
                    "iterations_per_step": self.iterations_per_step,
                    "max_iterations": self.max_iterations,
                    "stall_iterations": self.stall_iterations}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InvalidSpec(name, value, "a whole number >= 1")
        if self.max_downtime_ms > 60_000:
            raise InvalidSpec("max_downtime_ms", self.max_downtime_ms,
                              "at most 60000 (a guest paused longer loses its network "
                              "sessions)")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise InvalidSpec("timeout_s", self.timeout_s, "a number of seconds > 0")
        if self.bandwidth_mib_s is not None and self.bandwidth_mib_s < 1:
            raise InvalidSpec("bandwidth_mib_s", self.bandwidth_mib_s,
                              "a whole number of MiB/s >= 1 (or none for no limit)")
        if not 0 <= self.progress_min_pct < 100:
            raise InvalidSpec("progress_min_pct", self.progress_min_pct, "0 to 99")
        for name, pct in (("auto_converge_initial_pct", self.auto_converge_initial_pct),
                          ("auto_converge_increment_pct", self.auto_converge_increment_pct)):
            if not 1 <= pct <= 99:
                raise InvalidSpec(name, pct, "a percentage from 1 to 99")
        if not 0.01 <= self.poll_interval_s <= 10:
            raise InvalidSpec("poll_interval_s", self.poll_interval_s, "0.01 to 10 seconds")

    @property
    def first_downtime_ms(self) -> int:
        return min(self.initial_downtime_ms, self.max_downtime_ms)

    def options(self, *, same_kernel_storage: bool = False) -> MigrationOptions:
        """How the job starts (what cannot change once it runs). Always over TLS: there
        is no setting that sends guest memory in clear."""
        return MigrationOptions(
            max_downtime_ms=self.first_downtime_ms, bandwidth_mib_s=self.bandwidth_mib_s,
            auto_converge=self.auto_converge,
            auto_converge_initial_pct=self.auto_converge_initial_pct,
            auto_converge_increment_pct=self.auto_converge_increment_pct,
            postcopy=self.postcopy, tls=True, same_kernel_storage=same_kernel_storage)


@dataclass(frozen=True)
class Decision:
    """What to do now; all None/False means keep going."""

    downtime_ms: int | None = None  # set the max downtime to this
    postcopy: bool = False  # switch to post-copy now
    abort_reason: str | None = None  # give up with this message
    stalled: bool = False  # iterations stopped making progress (for display)


def downtime_for(settings: ConvergenceSettings, iteration: int) -> int:
    """The stun window for ``iteration`` (1-based): initial, then evenly up to the cap."""
    first, cap = settings.first_downtime_ms, settings.max_downtime_ms
    if settings.downtime_steps == 1 or first >= cap:
        return cap
    step = min(max(iteration - 1, 0) // settings.iterations_per_step,
               settings.downtime_steps - 1)
    return first + (cap - first) * step // (settings.downtime_steps - 1)


def remaining_per_iteration(history: Sequence[JobSample]) -> dict[int, int]:
    """For each iteration seen, the most left to copy during it (its dirty set: what
    the iteration started with)."""
    out: dict[int, int] = {}
    for s in history:
        if s.iteration < 1 or s.data_remaining_bytes is None:
            continue
        out[s.iteration] = max(out.get(s.iteration, 0), s.data_remaining_bytes)
    return out


def stalled(settings: ConvergenceSettings, history: Sequence[JobSample]) -> bool:
    """Whether the last ``stall_iterations`` finished iterations made no real progress.

    The first iteration copies all of memory and says nothing about convergence, so
    the comparison starts at iteration 2. The running iteration is not finished.
    """
    if not history:
        return False
    per = remaining_per_iteration(history)
    current = history[-1].iteration
    done = sorted(i for i in per if 2 <= i < current)
    if len(done) < settings.stall_iterations + 1:
        return False
    window = done[-(settings.stall_iterations + 1):]
    before, recent = per[window[0]], min(per[i] for i in window[1:])
    if before == 0:
        return False
    return recent > before * (1 - settings.progress_min_pct / 100)


def decide(settings: ConvergenceSettings, history: Sequence[JobSample], *,
           downtime_ms: int, postcopy_started: bool) -> Decision:
    """The next step for a migration whose job stats so far are ``history`` (oldest
    first), running with max downtime ``downtime_ms``."""
    if not history or postcopy_started:
        # In post-copy the guest already runs on the destination: nothing to steer, and
        # aborting would lose it.
        return Decision()
    last = history[-1]
    if last.iteration > settings.max_iterations:
        return Decision(abort_reason=(
            f"failed to converge after {settings.max_iterations} iterations (the limit); "
            f"{_left(last)} still to copy with a {downtime_ms} ms stun window"))
    if settings.timeout_s is not None and last.elapsed_ms >= settings.timeout_s * 1000:
        return Decision(abort_reason=(
            f"failed to converge after {last.iteration} iterations in "
            f"{last.elapsed_ms / 1000:.0f} s (timeout {settings.timeout_s:g} s); "
            f"{_left(last)} still to copy"))
    stuck = stalled(settings, history)
    want = settings.max_downtime_ms if stuck else downtime_for(settings, last.iteration)
    if want > downtime_ms:
        return Decision(downtime_ms=want, stalled=stuck)
    if stuck and settings.postcopy:
        return Decision(postcopy=True, stalled=True)
    return Decision(stalled=stuck)


def _left(s: JobSample) -> str:
    if s.data_remaining_bytes is None:
        return "an unknown amount"
    return f"{s.data_remaining_bytes / (1024 * 1024):.1f} MiB"
