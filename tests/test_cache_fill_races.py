"""A cache fill that read the backend before a write and lands after it never undoes the write.

A GET miss reads the old object, a PUT or DELETE through the same gateway commits and drops
the key's entries, then the miss completes. Its old object must not be cached (it would be
served until revalidate_after ran out, after the gateway's own acknowledged write and after a
HEAD there said the new object), and a GET sent after the write must not join that miss.
(Found by a review; each test failed before ReadCache remembered invalidation times.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from s3latent.objects.reads import BytesBody
from tests.inprocess import InProcessGateway
from tests.test_cache_staleness import PLAIN, get, gw, put  # noqa: F401
from tests.test_latent_objects import tiny_model  # noqa: F401

SLOW = 0.25  # < R (0.5 s): the stale entry is still "fresh" when the miss lands


def slow_first_get(backend: Any) -> asyncio.Event:
    """The next backend GET reads its object at once but answers SLOW later."""
    orig = backend.get_object
    started = asyncio.Event()

    async def slow(bucket: str, key: str, *args: Any, **kw: Any) -> Any:
        backend.get_object = orig
        info, body = await orig(bucket, key, *args, **kw)
        data = b"".join([c async for c in body])
        await body.close()
        started.set()
        await asyncio.sleep(SLOW)
        return info, BytesBody(data)

    backend.get_object = slow
    return started


async def test_put_during_a_miss_is_not_undone(gw: InProcessGateway) -> None:  # noqa: F811
    await put(gw, "a.png", b"one")
    started = slow_first_get(gw.backend)
    miss = asyncio.create_task(gw.call("GET", f"/{PLAIN}/a.png"))
    await started.wait()
    await put(gw, "a.png", b"two, longer")  # acknowledged: the gateway dropped the key
    head = await gw.run(lambda s3: s3.head_object(Bucket=PLAIN, Key="a.png"))
    assert head["ContentLength"] == len(b"two, longer")
    assert (await miss).body == b"one"  # fine: it started before the write
    assert await get(gw, "a.png") == b"two, longer", \
        "the gateway serves the object its own acknowledged PUT replaced (and HEAD disagrees)"


async def test_delete_during_a_miss_is_not_undone(gw: InProcessGateway) -> None:  # noqa: F811
    await put(gw, "a.png", b"one")
    started = slow_first_get(gw.backend)
    miss = asyncio.create_task(gw.call("GET", f"/{PLAIN}/a.png"))
    await started.wait()
    await gw.run(lambda s3: s3.delete_object(Bucket=PLAIN, Key="a.png"))
    await miss
    reply = await gw.call("GET", f"/{PLAIN}/a.png")
    assert reply.status == 404, "a deleted object is served after its DELETE was acknowledged"


async def test_get_after_put_does_not_join_an_older_miss(gw: InProcessGateway) -> None:  # noqa: F811
    await put(gw, "a.png", b"one")
    started = slow_first_get(gw.backend)
    miss = asyncio.create_task(gw.call("GET", f"/{PLAIN}/a.png"))
    await started.wait()
    await put(gw, "a.png", b"two, longer")
    later = await gw.call("GET", f"/{PLAIN}/a.png")  # arrives after the PUT's 200
    await miss
    assert later.body == b"two, longer", "a GET sent after the PUT's 200 got the old object " \
        "by joining a miss that started before the write"
