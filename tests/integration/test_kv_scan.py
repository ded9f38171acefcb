"""`kv_scan`: every live key of a KV prefix, including one written just before the scan."""

from __future__ import annotations

import nats

from qserver.jsutil import ensure_key_value, kv_scan
from services.stack.natsserver import NatsServer
from tests.conftest import unique_prefix


async def test_a_scan_sees_the_key_written_just_before_it_and_not_the_deleted_ones(
    nats_server: NatsServer,
) -> None:
    """Create, scan, delete, scan, 200 times over, with other keys and deletion markers
    around: the watcher-based scan it replaces missed a just-written key now and then
    (a gateway then answered 404 to the deletion of an API key it had just made)."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream(timeout=30)
        bucket = unique_prefix().replace(".", "_")
        kv = await ensure_key_value(js, bucket, replicas=1)
        await kv.put("other.a", b"1")
        await kv.put("keys.kept", b"kept")
        for i in range(200):
            await kv.create(f"keys.k{i}", str(i).encode())
            found = dict(await kv_scan(js, bucket, "keys"))
            assert found == {"keys.kept": b"kept", f"keys.k{i}": str(i).encode()}, i
            await kv.delete(f"keys.k{i}")
            assert dict(await kv_scan(js, bucket, "keys")) == {"keys.kept": b"kept"}, i
        assert await kv_scan(js, bucket, "none") == []
        # Nothing left behind: each scan removes its consumer.
        info = await js.stream_info(f"KV_{bucket}")
        assert info.state.consumer_count == 0
    finally:
        await nc.close()
