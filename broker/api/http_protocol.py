"""uvicorn's httptools protocol with a bound on a request's head (request line and headers).

llhttp (httptools) sets no limit of its own: it gathers a header of any size, so one unauthenticated client
could make the broker hold megabytes per connection before any of its code runs (h11, which uvicorn used
before, refuses an incomplete head past 16 KiB).  This protocol counts the bytes received while a head is
incomplete and answers 400 and closes the connection past ``HEAD_BYTES_MAX``, as h11 did.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# h11's default (uvicorn's h11_max_incomplete_event_size): what the broker accepted before httptools.
HEAD_BYTES_MAX = 16 * 1024
_HEAD_END = b"\r\n\r\n"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request head longer than ``HEAD_BYTES_MAX`` bytes."""

    head_bytes_max = HEAD_BYTES_MAX

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0  # bytes of the head under way; None once it is complete

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            seen = self._head_bytes + len(data)
            if seen > self.head_bytes_max:
                # The head may end inside this piece (the body follows): only the bytes up to its end count.
                end = data.find(_HEAD_END)
                if end < 0 or self._head_bytes + end + len(_HEAD_END) > self.head_bytes_max:
                    self.logger.warning("A request head longer than %d bytes was refused.", self.head_bytes_max)
                    self.send_400_response("Request head too large.")
                    return
            self._head_bytes = seen
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # the next request on this connection (pipelined or kept alive) starts its head
        super().on_message_complete()
