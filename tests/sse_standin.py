"""A stand-in OpenAI completions server on loopback (stdlib asyncio), for the endpoint runner's tests.

A real HTTP server that streams SSE chunks of one token each (a request without ``stream`` gets one
JSON answer with ``usage``; ``/health`` answers 200). Each streamed POST ``/v1/completions`` takes the
next behaviour from ``behaviours``: "ok" (full stream), "drop" (half the tokens, then the connection
closes), "500", "stall" (1 token, then silence), "linger" (the full stream and [DONE], then silence instead
of the body's last chunk). ``/metrics`` serves vLLM-named TTFT and ITL histogram
sums and counts timed by the stand-in itself (so they agree with the client), or, with
``server_itl_ms``, a fixed ITL the server claims (to make client and server disagree). ``burst`` sends
all tokens of a stream at once (the client then sees no inter-token time). ``parallel`` is answered at
``/server_info`` as vLLM's parallel config (absent: HTTP 404, as vLLM without dev mode).

Not a vLLM: no tokenizer (prompts must be token ids), no batching, no KV cache.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any, Self


class SseStandIn:
    def __init__(self, behaviours: list[str] | None = None, *, token_delay_s: float = 0.002,
                 server_itl_ms: float | None = None, burst: bool = False,
                 parallel: dict[str, Any] | None = None):  # fmt: skip
        self.behaviours = list(behaviours or [])
        self.token_delay_s = token_delay_s
        self.server_itl_ms = server_itl_ms
        self.burst = burst
        self.parallel = parallel
        self.requests = 0
        self.histograms = {"time_to_first_token": [0.0, 0], "inter_token_latency": [0.0, 0]}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1]) if b"ength:" in head else 0
                body = json.loads(await reader.readexactly(length)) if length else {}
                if method == b"POST" and path == b"/v1/completions":
                    if not await self._complete(body, writer):
                        return
                elif method == b"GET" and path == b"/health":
                    _send(writer, 200, b"", b"text/plain")
                elif method == b"GET" and path == b"/metrics":
                    _send(writer, 200, self._metrics().encode(), b"text/plain")
                elif method == b"GET" and path.startswith(b"/server_info") and self.parallel is not None:
                    info = {"vllm_config": {"parallel_config": self.parallel}}
                    _send(writer, 200, json.dumps(info).encode(), b"application/json")
                else:
                    _send(writer, 404, b"", b"text/plain")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _metrics(self) -> str:
        lines = ['vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="64"} 1.0']
        for name, (total_s, count) in self.histograms.items():
            lines += [f'vllm:{name}_seconds_sum{{engine="0"}} {total_s!r}',
                      f'vllm:{name}_seconds_count{{engine="0"}} {count}']  # fmt: skip
        return "\n".join(lines) + "\n"

    def _observe(self, name: str, seconds: float) -> None:
        h = self.histograms[name]
        h[0] += seconds
        h[1] += 1

    async def _complete(self, body: dict, writer: asyncio.StreamWriter) -> bool:
        """Answer one completion; False if the connection must close."""
        self.requests += 1
        t0 = time.perf_counter()
        prompt = body["prompt"]
        usage = {"prompt_tokens": len(prompt) if isinstance(prompt, list) else len(prompt.split()),
                 "completion_tokens": body["max_tokens"]}  # fmt: skip
        if not body.get("stream"):  # untimed requests (counting prompt tokens): one JSON answer
            answer = {"choices": [{"index": 0, "text": " t0"}], "usage": usage}
            _send(writer, 200, json.dumps(answer).encode(), b"application/json")
            return True
        behaviour = self.behaviours.pop(0) if self.behaviours else "ok"
        if behaviour == "500":
            _send(writer, 500, b'{"error": "engine crashed"}', b"application/json")
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        n_tokens = {"ok": body["max_tokens"], "linger": body["max_tokens"], "drop": body["max_tokens"] // 2,
                    "stall": 1}[behaviour]  # fmt: skip
        last, pending = t0, []
        for i in range(n_tokens):
            if i and not self.burst:
                await asyncio.sleep(self.token_delay_s)
            chunk = {"choices": [{"index": 0, "text": f" t{i}", "token_ids": [7]}]}
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            if self.burst:  # one write for the whole stream: the client reads it all at once
                pending.append(event)
            else:
                _write_chunk(writer, event)
            if not self.burst:
                await writer.drain()
            now = time.perf_counter()
            if i == 0:
                self._observe("time_to_first_token", now - t0)
            else:
                claimed = self.server_itl_ms / 1e3 if self.server_itl_ms is not None else now - last
                self._observe("inter_token_latency", claimed)
            last = now
        if pending:
            _write_chunk(writer, b"".join(pending))
        if behaviour == "drop":
            await writer.drain()
            return False  # close mid-stream: no terminating chunk
        if behaviour == "stall":
            await writer.drain()
            await asyncio.sleep(3600)
        usage["completion_tokens"] = n_tokens
        _write_chunk(
            writer, f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode()
        )
        if behaviour == "linger":
            await writer.drain()
            await asyncio.sleep(3600)
        _write_chunk(writer, b"")
        return True


def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: bytes) -> None:
    reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}[status]
    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                 % (status, reason, ctype, len(body), body))  # fmt: skip


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
