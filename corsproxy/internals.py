"""Every private aiohttp member corsproxy relies on, in one place.

guard.py subclasses aiohttp's ``RequestHandler`` (its request loop, flow control and graceful stop),
and a few lines elsewhere reach past aiohttp's public API. None of these is promised between releases
(some were renamed between patch releases), so pyproject.toml pins aiohttp to the range the suite runs
on, and tests/test_internals.py fails on an aiohttp where any member listed here is gone.
"""

from __future__ import annotations

# RequestHandler (aiohttp.web_protocol; slots or methods, some from BaseProtocol): guard.GuardedHandler and
# fastpath.FastHandler.
REQUEST_HANDLER = (
    "_messages",  # the parsed-message queue the fast path takes from (a fastpath.MessageQueue in its place)
    "_task_handler",  # aiohttp's loop task: started only when a message is left for it (fastpath.FastHandler)
    "_waiter",  # aiohttp's loop waiting for a message: held back, then woken
    "_parser",  # message_consumed() for each message taken; dropped while idle, then remade (guard._new_parser)
    "_read_bufsize", "_upgraded",  # what a parser is made with; an upgrade's bytes are not the parser's
    "_request_count",  # counted for a head answered without a parse too (fastpath.FastHandler._answered_again)
    "_close", "_force_close",  # closing after this response / now
    "_current_request", "_request_in_progress", "_handler_waiter",  # a request in flight; the stop waits for it
    "_keepalive_timeout", "_next_keepalive_close_time", "_keepalive_handle", "_process_keepalive",
    "_reading_paused", "_buffer_paused", "_msg_queue_resume_size", "_resume_reading_if_drained",
    "_drain_helper", "_paused", "_loop",  # writing paused: a response waits in our buffer (RESPONSE_BUFFER)
)
# aiohttp.web_protocol: a parse error queued as a message (guard._check_new); what RequestHandler makes its parser
# with (guard.GuardedHandler._new_parser: tests/test_internals.py compares the two).
WEB_PROTOCOL = ("_ErrInfo", "HttpRequestParser", "RequestPayloadError", "MAX_MSG_QUEUE_SIZE")
SERVER = ("_kwargs", "_loop")  # web.Server instances: copied into guard.GuardedServer
RUNNER = ("_make_server", "_shutdown_timeout")  # web.AppRunner: our own server; drain_timeout set at the stop
APPLICATION = ("_router",)  # web.Application: app.CatchAllRouter
STREAM_RESPONSE = ("_send_headers_immediately",)  # web.StreamResponse: head and body in one write (proxy.py)
SITE = ("_runner", "_ssl_context", "_backlog", "_server")  # web.BaseSite: its own fields, in listener.ListenSite
REQUEST = ("_payload_writer",)  # web.BaseRequest: has the response started (guard._check_body)

# prometheus_client.Histogram (metrics.Metrics.publish): many observations added at once, to its per-bucket values
# (the last is +Inf) and its sum. pyproject.toml pins prometheus-client to the minor release this is tested on.
HISTOGRAM = ("_buckets", "_sum", "_upper_bounds")
