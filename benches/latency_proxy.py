"""A latency-injecting HTTP proxy for scripts/bench: every request is held
for --delay-ms before it is forwarded (over a kept-alive upstream connection
per client connection), which makes a local emulator answer like real SQS
(10-30 ms). asyncio, so hundreds of requests can wait at once.

    python latency_proxy.py --listen PORT --upstream PORT --delay-ms 20
"""
import argparse
import asyncio


async def read_message(reader):
    """One HTTP/1.1 message (head + Content-Length body), or None at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head + body


async def handle(client_r, client_w, upstream_port, delay):
    up_r = up_w = None
    try:
        while True:
            try:
                request = await read_message(client_r)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await asyncio.sleep(delay)
            if up_w is None:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
            up_w.write(request)
            await up_w.drain()
            response = await read_message(up_r)
            client_w.write(response)
            await client_w.drain()
            if b"connection: close" in response.split(b"\r\n\r\n", 1)[0].lower():
                up_w.close()
                up_r = up_w = None
    finally:
        client_w.close()
        if up_w is not None:
            up_w.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.upstream, args.delay_ms / 1000.0), "127.0.0.1", args.listen
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
