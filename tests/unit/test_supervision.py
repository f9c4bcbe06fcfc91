"""The --workers supervision policy (gateway.core.supervision) with plain values and times."""

from __future__ import annotations

import signal

import pytest

from gateway.core.supervision import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    KILL_GRACE,
    MAX_FAILED_RESTARTS,
    STABLE_AFTER,
    Exit,
    ExitStatus,
    Kill,
    Log,
    Spawn,
    Supervision,
    Terminate,
    backoff_delay,
)

KILLED = ExitStatus(signal=signal.SIGKILL)
CLEAN = ExitStatus(code=0)


def without_logs(actions):
    return [a for a in actions if not isinstance(a, Log)]


def started(workers: int = 2, drain_timeout: float = 10.0, now: float = 0.0) -> Supervision:
    s = Supervision(workers, drain_timeout)
    assert [Spawn(i) for i in range(1, workers + 1)] == s.start(now)
    for i in range(1, workers + 1):
        assert [] == s.up(i, now + 1)
    return s


def test_start_spawns_every_worker_and_nothing_is_scheduled():
    s = Supervision(3, 10.0)
    assert [Spawn(1), Spawn(2), Spawn(3)] == s.start(0.0)
    assert [1, 2, 3] == s.running()
    assert s.next_wakeup() is None


def test_at_least_one_worker():
    with pytest.raises(ValueError):
        Supervision(0, 10.0)


def test_exit_status_text():
    assert "killed by SIGKILL" == str(KILLED)
    assert "exit status 3" == str(ExitStatus(code=3))
    assert "killed by signal 200" == str(ExitStatus(signal=200))
    assert CLEAN.clean and not KILLED.clean and not ExitStatus(code=1).clean


def test_backoff_doubles_up_to_the_cap():
    assert [0.5, 1.0, 2.0, 4.0] == [backoff_delay(n) for n in (1, 2, 3, 4)]
    assert BACKOFF_MAX == backoff_delay(100)
    assert BACKOFF_INITIAL == backoff_delay(1)


def test_a_worker_that_dies_is_restarted_after_the_backoff():
    s = started()
    actions = s.exited(1, KILLED, 10.0)
    assert [] == without_logs(actions)
    assert [Log("warn", "worker 1 exited unexpectedly (killed by SIGKILL); restarting it in 0.5 s")] == actions
    assert [2] == s.running()
    assert 10.5 == s.next_wakeup()
    assert [] == s.tick(10.4)
    assert [Spawn(1)] == s.tick(10.5)
    assert [1, 2] == s.running()
    assert s.next_wakeup() is None


def test_repeated_exits_back_off_longer_and_a_stable_worker_starts_over():
    s = started()
    now = 5.0
    delays = []
    for _ in range(4):
        s.exited(1, KILLED, now)
        delays.append(s.next_wakeup() - now)
        now = s.next_wakeup()
        assert [Spawn(1)] == s.tick(now)
        s.up(1, now)
        now += 1.0  # up, but not for long
    assert [0.5, 1.0, 2.0, 4.0] == delays
    # Up for STABLE_AFTER seconds: the next exit is a first exit again.
    now += STABLE_AFTER
    s.exited(1, KILLED, now)
    assert BACKOFF_INITIAL == s.next_wakeup() - now


def test_each_worker_has_its_own_backoff():
    s = started()
    s.exited(1, KILLED, 5.0)
    s.tick(5.5)
    s.up(1, 5.6)
    s.exited(1, KILLED, 6.0)  # second exit of worker 1: 1 s
    s.exited(2, KILLED, 6.0)  # first of worker 2: 0.5 s
    assert 6.5 == s.next_wakeup()
    assert [Spawn(2)] == s.tick(6.5)
    assert [Spawn(1)] == s.tick(7.0)


def test_a_worker_that_exits_before_it_was_ever_up_is_a_startup_error():
    s = Supervision(2, 10.0)
    s.start(0.0)
    actions = s.exited(1, ExitStatus(code=1), 0.5, error="--hook: unknown hook 'x'")
    assert [Terminate(2)] == without_logs(actions)
    assert [2] == s.running()
    assert s.stopping
    # The other worker is drained, never restarted; then the supervisor exits 1 with the worker's line.
    assert [Exit(1, "--hook: unknown hook 'x'")] == s.exited(2, CLEAN, 0.7)
    assert s.next_wakeup() is None


def test_a_startup_error_without_a_line_names_the_worker():
    s = Supervision(1, 10.0)
    s.start(0.0)
    actions = s.exited(1, ExitStatus(signal=signal.SIGSEGV), 0.5)
    assert [Exit(1, "worker 1 could not start (killed by SIGSEGV): see the log")] == without_logs(actions)


def test_a_restart_that_keeps_failing_before_it_is_up_gives_up():
    s = started(workers=1)
    now = 5.0
    s.exited(1, KILLED, now)
    for attempt in range(1, MAX_FAILED_RESTARTS + 1):
        now = s.next_wakeup()
        assert [Spawn(1)] == s.tick(now)
        actions = s.exited(1, ExitStatus(code=1), now + 0.1, error="cannot do it")
        if attempt < MAX_FAILED_RESTARTS:
            assert [] == without_logs(actions)
        else:
            assert [Exit(1, "cannot do it")] == without_logs(actions)


def test_stop_terminates_every_worker_and_exits_0_once_all_have_drained():
    s = started(drain_timeout=10.0)
    actions = s.stop(20.0)
    assert [Terminate(1), Terminate(2)] == without_logs(actions)
    assert 20.0 + 10.0 + KILL_GRACE == s.next_wakeup()
    assert [] == s.exited(1, CLEAN, 21.0)
    assert [Exit(0)] == s.exited(2, CLEAN, 22.0)
    assert Exit(0) == s.outcome
    assert s.next_wakeup() is None
    assert [] == s.stop(23.0)


def test_stop_cancels_a_pending_restart():
    s = started()
    s.exited(1, KILLED, 5.0)
    assert [Terminate(2)] == without_logs(s.stop(5.1))
    assert [] == s.tick(6.0)
    assert [Exit(0)] == s.exited(2, CLEAN, 6.0)


def test_stop_with_no_worker_running_exits_at_once():
    s = started(workers=1)
    s.exited(1, KILLED, 5.0)
    assert [Exit(0)] == without_logs(s.stop(5.1))


def test_a_worker_that_does_not_drain_in_time_is_killed_and_the_status_is_1():
    s = started(drain_timeout=2.0)
    s.stop(10.0)
    s.exited(1, CLEAN, 11.0)
    assert [] == s.tick(10.0 + 2.0 + KILL_GRACE - 0.01)
    assert [Kill(2)] == without_logs(s.tick(10.0 + 2.0 + KILL_GRACE))
    assert [] == s.tick(20.0)  # killed once
    # Nothing more to do until it exits: no wake-up (a past one would make the adapter spin).
    assert s.next_wakeup() is None
    assert [Exit(1)] == s.exited(2, KILLED, 17.5)


def test_a_worker_that_exits_badly_during_the_drain_is_logged_not_restarted():
    s = started()
    s.stop(1.0)
    actions = s.exited(1, ExitStatus(code=2), 1.5)
    assert [Log("warn", "worker 1 exited during the drain (exit status 2)")] == actions
    assert [Exit(0)] == s.exited(2, CLEAN, 1.6)


def test_events_for_workers_not_running_are_ignored():
    s = started()
    s.exited(1, KILLED, 5.0)
    assert [] == s.exited(1, KILLED, 5.1)
    assert [] == s.up(1, 5.2)
    assert [2] == s.running()
