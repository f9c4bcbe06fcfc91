"""HeldMessages: whole messages held back while the socket is paused, written in order on
resume, dropped on overflow (plain values, no reactor)."""

from __future__ import annotations

from gateway.transports._backpressure import HeldMessages


class Socket:
    """Stands in for Twisted's transport: pauses the producer once `room` is used up."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written: list[str] = []
        self.producer: HeldMessages | None = None

    def write(self, message: str) -> None:
        self.written.append(message)
        self.room -= len(message)
        if self.room <= 0 and self.producer is not None:
            self.producer.pauseProducing()


def make(room: int = 100) -> tuple[HeldMessages, Socket]:
    sock = Socket(room)
    held = HeldMessages(sock.write)
    sock.producer = held
    return held, sock


def test_messages_go_straight_out_while_the_socket_has_room():
    held, sock = make()
    assert held.offer("a", 1, 10) and held.offer("b", 1, 10)
    assert sock.written == ["a", "b"] and held.held_bytes == 0


def test_paused_messages_are_held_and_written_in_order_on_resume():
    held, sock = make(room=5)
    held.offer("xxxxx", 5, 100)  # fills the socket: paused
    for m in ["1", "2", "3"]:
        assert held.offer(m, 1, 100)
    assert sock.written == ["xxxxx"] and held.held_bytes == 3
    sock.room = 2
    held.resumeProducing()  # room for two, then paused again inside write()
    assert sock.written == ["xxxxx", "1", "2"] and held.held_bytes == 1
    sock.room = 100
    held.resumeProducing()
    assert sock.written == ["xxxxx", "1", "2", "3"] and held.held_bytes == 0
    assert held.offer("4", 1, 100) and sock.written[-1] == "4"


def test_nothing_overtakes_held_messages():
    """After a resume that could not write everything, a new message queues behind the rest."""
    held, sock = make(room=1)
    held.offer("a", 1, 100)
    held.offer("b", 1, 100)
    held.offer("c", 1, 100)
    sock.room = 1
    held.resumeProducing()  # writes "b", paused again
    held.paused = False  # even if the socket is not full any more...
    held.offer("d", 1, 100)  # ...the new one waits behind "c"
    assert sock.written == ["a", "b"]
    sock.room = 100
    held.resumeProducing()
    assert sock.written == ["a", "b", "c", "d"]


def test_overflow_is_reported_and_drop_forgets_the_backlog():
    held, sock = make(room=1)
    held.offer("a", 1, 10)
    assert held.offer("x" * 6, 6, 10)
    assert not held.offer("y" * 6, 6, 10)
    assert held.drop() == 2 and held.held_bytes == 0
    held.resumeProducing()
    assert sock.written == ["a"]


def test_stop_producing_forgets_everything():
    held, sock = make(room=1)
    held.offer("a", 1, 10)
    held.offer("b", 1, 10)
    held.stopProducing()
    held.resumeProducing()
    assert sock.written == ["a"]


def test_idle_says_whether_an_offer_would_write_at_once():
    """``idle`` (read by the fan-out instead of calling offer) follows every change:
    paused, holding, resumed with some still held, drained, dropped, stopped."""
    held, sock = make(room=1)
    assert held.idle
    held.offer("a", 1, 100)  # fills the socket: paused
    assert not held.idle
    held.offer("b", 1, 100)
    held.offer("c", 1, 100)
    sock.room = 1
    held.resumeProducing()  # "b" out, paused again, "c" still held
    assert not held.idle
    sock.room = 100
    held.resumeProducing()
    assert held.idle and sock.written == ["a", "b", "c"]
    held.pauseProducing()
    held.offer("d", 1, 100)
    assert held.drop() == 1 and not held.idle  # still paused
    held.resumeProducing()
    assert held.idle
    held.pauseProducing()
    held.stopProducing()
    assert held.idle
