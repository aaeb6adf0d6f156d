"""A Freelance (10/FLP) server: handlers served straight to clients, no broker between.

`FreelanceServer` binds a ROUTER whose routing id is the endpoint clients connect to (its
`advertise`) and answers every PING with a PONG from its loop. A handler is the same function a
`Worker` runs (frames in, frames out, an exception answered with a failure report). With
`concurrency` 1 the loop runs it itself, which saves two thread hops a request (about 1.4 times
the synchronous rate here); a handler running longer than the clients' liveness window (1 s by
default) then makes them take the server for dead meanwhile and send new requests elsewhere,
and its reply is still taken when it comes. With more, `concurrency` handler threads take the
requests and the loop keeps answering PINGs while they run. A request for a service the server
does not have gets 404, a request without a service 400; a message that is none of FLP's is
dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import NamedTuple

import zmq

from titanic._zmq import NOBLOCK, POLLIN, LogBudget, new_socket, recv_frames, send_frames
from titanic.errors import EndpointError, ProtocolError
from titanic.logs import quoted_name
from titanic.protocol import flp
from titanic.protocol.flp import Frames
from titanic.settings import check_endpoint
from titanic.worker.mdp import Handler, failure_frames, reply_frames

log = logging.getLogger("titanic.worker.freelance")

#: Longest the loop waits before it looks whether stop() was called, in seconds.
STOP_CHECK_S = 0.1


class _Job(NamedTuple):
    client: bytes
    sequence: bytes
    service: bytes
    body: Frames


def advertised_endpoint(bind: str, advertise: str | None) -> str:
    """The endpoint clients connect to, the server's identity: `advertise`, else the bound
    endpoint when it names one host and port; EndpointError for a wildcard without
    `advertise`."""
    if advertise is not None:
        return check_endpoint(advertise)
    endpoint = check_endpoint(bind, bind=True)
    if "*" in endpoint or endpoint.endswith(":0"):
        raise EndpointError(f"{endpoint} binds a wildcard: give the endpoint clients connect "
                            "to (--advertise), the server's identity")
    return endpoint


class FreelanceServer:
    """Serves handlers, by service name, to freelance clients on `bind` until `stop()`."""

    def __init__(self, bind: str, handlers: Mapping[str, Handler], *,
                 advertise: str | None = None, concurrency: int = 1,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.bind_endpoint = check_endpoint(bind, bind=True)
        self.identity = advertised_endpoint(bind, advertise)
        self.handlers = {name.encode(): handler
                         for name, handler in handlers.items()}
        self.concurrency = max(1, concurrency)
        self.requests_handled = 0
        self.requests_failed = 0
        #: Requests answered 404 (unknown service) or 400 (no service named).
        self.requests_refused = 0
        #: Messages dropped: none of FLP's, or a request without a readable sequence.
        self.dropped = 0
        self.pings = 0
        #: Answers that could not be sent: their client is gone (it asks again elsewhere).
        self.unsent = 0
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._stopped = threading.Event()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._replies = f"inproc://titanic-flp-replies-{id(self):x}"
        self._socket: zmq.Socket[bytes] | None = None
        self._count_lock = threading.Lock()
        self._log_budget = LogBudget()

    def bind(self) -> str:
        """Bind the socket (zmq.ZMQError if the endpoint cannot be); the bound address."""
        if self._socket is None:
            sock = new_socket(self._context, zmq.ROUTER)
            sock.setsockopt(zmq.ROUTING_ID, self.identity.encode())
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            try:
                sock.bind(self.bind_endpoint)
            except zmq.ZMQError:
                sock.close(0)
                raise
            self._socket = sock
            log.info("freelance server %s listening on %s for %s", self.identity,
                     self.bind_endpoint, ", ".join(map(quoted_name, self.handlers)))
        return str(self._socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def stop(self) -> None:
        """Ask `run()` to return after the requests in hand; safe from threads and signals."""
        self._stopped.set()

    def run(self) -> None:
        """Serve until stop(): the loop on this thread, the handlers on threads of their own."""
        self.bind()
        sock = self._socket
        assert sock is not None
        replies = new_socket(self._context, zmq.PULL)
        replies.bind(self._replies)
        threads = [threading.Thread(target=self._handle_jobs, name=f"flp-handler-{n}",
                                    daemon=True)
                   for n in range(self.concurrency if self.concurrency > 1 else 0)]
        for thread in threads:
            thread.start()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        try:
            while not self._stopped.is_set():
                ready = dict(poller.poll(int(STOP_CHECK_S * 1000)))
                if ready.get(replies, 0) & POLLIN:
                    self._send_replies(sock, replies)
                if ready.get(sock, 0) & POLLIN:
                    self._read_requests(sock)
        finally:
            for _ in threads:
                self._jobs.put(None)
            for thread in threads:
                thread.join(5.0)
            replies.close(0)
            sock.close(0)
            self._socket = None
            if self._own_context:
                self._context.term()

    def _read_requests(self, sock: zmq.Socket[bytes]) -> None:
        for _ in range(1000):  # then the replies get their turn
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                self._drop()
                continue
            self._take(sock, frames[0], frames[1:])

    def _take(self, sock: zmq.Socket[bytes], client: bytes, frames: Frames) -> None:
        if flp.is_ping(frames):
            self.pings += 1
            self._send(sock, [client, flp.PONG])
            return
        try:
            request = flp.parse_request(frames)
        except flp.MalformedRequest as exc:
            self.requests_refused += 1
            self._send(sock, [client, *flp.build_error(exc.sequence, flp.MALFORMED, exc.reason)])
            return
        except ProtocolError:
            self._drop()
            return
        if request.service not in self.handlers:
            self.requests_refused += 1
            reason = f"no service {quoted_name(request.service)} at {self.identity}"
            self._send(sock, [client, *flp.build_error(request.sequence, flp.UNKNOWN_SERVICE,
                                                       reason)])
            return
        job = _Job(client, request.sequence, request.service, request.body)
        if self.concurrency == 1:
            self._send(sock, [client, *flp.build_reply(job.sequence, flp.OK, self._call(job))])
        else:
            self._jobs.put(job)

    def _drop(self) -> None:
        self.dropped += 1
        if self._log_budget.allow():
            log.warning("freelance server %s dropped a message that is not 10/FLP (%d so far)",
                        self.identity, self.dropped)

    def _send_replies(self, sock: zmq.Socket[bytes], replies: zmq.Socket[bytes]) -> None:
        for _ in range(1000):
            try:
                frames = recv_frames(replies, NOBLOCK)
            except zmq.Again:
                return
            self._send(sock, frames)

    def _send(self, sock: zmq.Socket[bytes], frames: Frames) -> None:
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.ZMQError:  # the client is gone (or too far behind): it will ask again
            self.unsent += 1

    def _handle_jobs(self) -> None:
        out = new_socket(self._context, zmq.PUSH)
        out.connect(self._replies)
        try:
            while (job := self._jobs.get()) is not None:
                send_frames(out, [job.client, *flp.build_reply(job.sequence, flp.OK,
                                                                self._call(job))])
        except zmq.ContextTerminated:  # a handler that outlived the server's stop
            pass
        finally:
            out.close(0)

    def _call(self, job: _Job) -> Frames:
        try:
            frames = reply_frames(self.handlers[job.service](job.body))
        except Exception as exc:  # noqa: BLE001 - whatever the handler raises is its failure report
            with self._count_lock:
                self.requests_failed += 1
            return failure_frames(job.service, exc)
        with self._count_lock:
            self.requests_handled += 1
        return frames
