"""`AppInbox`: one request's ASGI messages, handed from the connection to the app.

What hypercorn's memory channel promised, kept: order, a bound on unread messages (an
app that does not read holds the connection's reader back), a `receive` that waits; plus
what the channel lacked: once the app has returned, messages are dropped instead of
filling a queue nobody reads.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trustmesh.control.app_inbox import AppInbox


def _body(n: int) -> Any:
    return {"type": "http.request", "body": b"%d" % n, "more_body": True}


async def test_messages_arrive_in_order_and_receive_waits_for_the_next() -> None:
    inbox = AppInbox(limit=10)
    got: list[Any] = []

    async def app() -> None:
        for _ in range(3):
            got.append(await inbox.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing queued: the app waits
        await inbox.put(_body(0))
        await inbox.put(_body(1))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [_body(0), _body(1)]
        await inbox.put(_body(2))
    assert got == [_body(0), _body(1), _body(2)]


async def test_a_full_inbox_holds_the_writer_until_the_app_reads() -> None:
    inbox = AppInbox(limit=2)
    sent: list[int] = []

    async def connection() -> None:
        for n in range(4):
            await inbox.put(_body(n))
            sent.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1]  # the third put waits: two are unread
        assert await inbox.receive() == _body(0)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1, 2]
        assert [await inbox.receive() for _ in range(3)] == [_body(1), _body(2), _body(3)]
    assert sent == [0, 1, 2, 3]


async def test_after_the_app_returns_messages_are_dropped_and_a_waiting_writer_is_released() -> None:
    inbox = AppInbox(limit=1)
    released = trio.Event()

    async def connection() -> None:
        await inbox.put(_body(0))
        await inbox.put(_body(1))  # waits: the inbox is full
        released.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection)
        await trio.testing.wait_all_tasks_blocked()
        assert not released.is_set()
        inbox.close()  # the app returned without reading its body
        with trio.fail_after(5):
            await released.wait()
    # Later messages (a disconnect, say) go nowhere and never wait.
    with trio.fail_after(5):
        for n in range(5):
            await inbox.put(_body(n))


async def test_a_cancelled_receive_leaves_the_inbox_usable() -> None:
    inbox = AppInbox(limit=4)
    with trio.move_on_after(0.05) as scope:
        await inbox.receive()
    assert scope.cancelled_caught
    await inbox.put(_body(7))
    with trio.fail_after(5):
        assert await inbox.receive() == _body(7)


async def test_a_cancelled_put_queues_nothing() -> None:
    inbox = AppInbox(limit=1)
    await inbox.put(_body(0))
    with trio.move_on_after(0.05) as scope:
        await inbox.put(_body(1))
    assert scope.cancelled_caught
    assert await inbox.receive() == _body(0)
    with trio.move_on_after(0.05) as scope:
        await inbox.receive()
    assert scope.cancelled_caught  # the cancelled message was not queued


@pytest.mark.parametrize("limit", [0, -3])
async def test_a_limit_below_one_still_lets_one_message_through(limit: int) -> None:
    # hypercorn's max_app_queue_size is a user setting; a 0 must not deadlock every request.
    inbox = AppInbox(limit=limit)
    with trio.fail_after(5):
        await inbox.put(_body(1))
        assert await inbox.receive() == _body(1)


async def test_a_receive_in_an_already_cancelled_scope_takes_nothing() -> None:
    # Starlette's Request.is_disconnected peeks this way; the message must stay for the app.
    inbox = AppInbox(limit=4)
    await inbox.put(_body(1))
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.receive()
    assert scope.cancelled_caught
    assert await inbox.receive() == _body(1)


async def test_two_tasks_waiting_to_receive_each_get_a_message() -> None:
    # One request's app may listen for the disconnect in one task while another reads.
    inbox = AppInbox(limit=4)
    got: list[Any] = []

    async def reader() -> None:
        got.append(await inbox.receive())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await inbox.put(_body(1))
            await inbox.put({"type": "http.disconnect"})
    assert sorted(m["type"] for m in got) == ["http.disconnect", "http.request"]
