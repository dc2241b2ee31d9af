//! What the peer sends: one handler per envelope type. A stream-level violation resets that
//! stream only.

use super::*;

impl Session {
    /// A violation on one stream: reset it (telling the peer) and carry on.
    pub(super) fn violation(&mut self, id: StreamId, violation: Violation) {
        tracing::debug!(%id, %violation, "stream protocol violation");
        match self.streams.get(&id) {
            Some(stream) if stream.phase != Phase::Dead => {
                self.abort_stream(id, StreamError::Violation(violation));
            }
            Some(_) => {}
            None => {
                if self.extensions {
                    self.emit(&Envelope::StreamReset(StreamReset {
                        id,
                        error: violation.to_string(),
                        refusal: None,
                    }));
                }
                // One reset per unknown id: further frames for it are dropped quietly.
                self.remember_closed(id);
            }
        }
    }

    pub(super) fn on_envelope(&mut self, envelope: Envelope) {
        let legacy = !self.extensions;
        match envelope {
            Envelope::Hello(hello) => self.on_hello(hello),
            Envelope::Ping(hb) => self.emit(&Envelope::Pong(hb)),
            Envelope::Pong(_) => {}
            Envelope::WindowUpdate(update) => self.on_window_update(update),
            Envelope::IamAuthRequest(request) => self.on_iam_request(request),
            Envelope::IamAuthResponse(response) => {
                if self.role == Role::Client {
                    self.events.push_back(Event::IamAuthResponse(response));
                }
            }
            // Whole-body messages are the Go dialect; a binary peer streams bodies, and
            // accepting a whole one would let it bypass the windows.
            Envelope::HttpRequest(r) if self.extensions => {
                self.violation(r.id, Violation::WholeBodyOnBinary);
            }
            Envelope::HttpResponse(r) if self.extensions => {
                self.violation(r.id, Violation::WholeBodyOnBinary);
            }
            Envelope::HttpRequest(r) => self.on_whole_request(r),
            Envelope::HttpResponse(r) => self.on_whole_response(r),
            Envelope::HttpRequestHead(r) => {
                let target = Target::Http {
                    method: r.method,
                    url: r.url,
                    headers: r.headers,
                };
                self.on_open(r.id, target, legacy);
            }
            Envelope::ConnectOpen(o) => {
                self.on_open(o.id, Target::Connect { address: o.address }, legacy);
            }
            Envelope::WsOpen(o) => {
                let target = Target::WebSocket {
                    url: o.url,
                    headers: o.headers,
                };
                self.on_open(o.id, target, legacy);
            }
            Envelope::ConnectAck(ack) => {
                self.on_ack(ack, Kind::Connect, Reply::Connect);
            }
            Envelope::WsAck(ack) => {
                self.on_ack(ack, Kind::WebSocket, Reply::WebSocket);
            }
            Envelope::HttpResponseHead(h) => {
                let reply = Reply::Http {
                    status_code: h.status_code,
                    headers: h.headers,
                };
                self.on_ack(Ack::accepted(h.id), Kind::Http, reply);
            }
            Envelope::ConnectData(d) => self.on_data(d.id, Kind::Connect, Chunk::plain(d.data)),
            Envelope::BodyChunk(d) => self.on_data(d.id, Kind::Http, Chunk::plain(d.data)),
            Envelope::WsMessage(m) => {
                let chunk = Chunk {
                    data: m.data,
                    ws_type: m.message_type.max(1),
                };
                self.on_data(m.id, Kind::WebSocket, chunk);
            }
            Envelope::ConnectFin(c) => self.on_fin(c.id, Kind::Connect, false),
            Envelope::BodyEnd(c) => match c.error {
                Some(error) => {
                    let error = StreamError::PeerReset(format!("body aborted: {error}"));
                    self.on_reset(c.id, error);
                }
                None => self.on_fin(c.id, Kind::Http, false),
            },
            Envelope::ConnectClose(c) => self.on_connect_close(c),
            Envelope::WsClose(c) => self.on_ws_close(c),
            Envelope::StreamReset(r) => self.on_stream_reset(r),
        }
    }

    /// The Go agent's IAM placeholder: answered once; the TLS handshake already authenticated.
    fn on_iam_request(&mut self, request: IamAuthRequest) {
        if self.role != Role::Server || self.iam_answered {
            return;
        }
        if request.id.len() > MAX_IAM_ID {
            self.close(CloseReason::Protocol(format!(
                "iam_auth_request id of {} bytes (at most {MAX_IAM_ID})",
                request.id.len()
            )));
            return;
        }
        self.iam_answered = true;
        self.emit(&Envelope::IamAuthResponse(IamAuthResponse {
            id: request.id.clone(),
            ok: true,
            error: None,
            session_token: None,
        }));
        self.events.push_back(Event::IamAuth(request));
    }

    /// A Go peer's request with its whole body.
    fn on_whole_request(&mut self, r: HttpRequest) {
        let target = Target::Http {
            method: r.method,
            url: r.url,
            headers: r.headers,
        };
        // A whole request: the reply must be whole too, whatever the peer announced.
        if self.on_open(r.id, target, true) {
            self.push_whole_body(r.id, r.body);
        }
    }

    /// A Go peer's response with its whole body: head, body and end at once.
    fn on_whole_response(&mut self, r: HttpResponse) {
        let id = r.id;
        let reply = Reply::Http {
            status_code: r.status_code,
            headers: r.headers,
        };
        if self.on_ack(Ack::accepted(id), Kind::Http, reply) {
            self.push_whole_body(id, r.body);
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.send_closed = true;
            }
        }
    }

    fn on_connect_close(&mut self, c: Close) {
        if self.is_opening(c.id) {
            // Go servers report a failed dial with a close instead of a refusing ack.
            let reason = c
                .error
                .unwrap_or_else(|| "closed by peer before ack".into());
            self.on_refused(c.id, Kind::Connect, Reply::Connect, reason, None);
        } else {
            self.on_fin(c.id, Kind::Connect, true);
        }
    }

    fn on_ws_close(&mut self, c: WsClose) {
        if self.is_opening(c.id) {
            let reason = c
                .error
                .unwrap_or_else(|| format!("closed by peer before ack (code {})", c.code));
            self.on_refused(c.id, Kind::WebSocket, Reply::WebSocket, reason, None);
            return;
        }
        // Deliver the close as a final message in RFC 6455 close-frame layout.
        let deliverable = self
            .streams
            .get(&c.id)
            .is_some_and(|s| !s.recv_fin && s.phase != Phase::Dead);
        if deliverable {
            let mut payload = BytesMut::new();
            if c.code != 0 {
                payload.extend_from_slice(&c.code.to_be_bytes());
                payload.extend_from_slice(c.error.unwrap_or_default().as_bytes());
            }
            let chunk = Chunk {
                data: payload.freeze(),
                ws_type: ws_type::CLOSE,
            };
            self.push_chunk(c.id, chunk);
        }
        self.on_fin(c.id, Kind::WebSocket, true);
    }

    fn on_stream_reset(&mut self, r: StreamReset) {
        if !self.is_opening(r.id) {
            self.on_reset(r.id, StreamError::PeerReset(r.error));
            return;
        }
        // A reset before the answer is a refusal of the open.
        let kind = self.streams.get(&r.id).map_or(Kind::Http, |s| s.kind);
        let reply = match kind {
            Kind::Http => Reply::Http {
                status_code: 0,
                headers: Headers::new(),
            },
            Kind::Connect => Reply::Connect,
            Kind::WebSocket => Reply::WebSocket,
        };
        self.on_refused(r.id, kind, reply, r.error, r.refusal);
    }

    pub(super) fn is_opening(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.phase == Phase::Opening)
    }

    /// The peer refused (or failed) a stream we are opening.
    pub(super) fn on_refused(
        &mut self,
        id: StreamId,
        kind: Kind,
        reply: Reply,
        reason: String,
        refusal: Option<RefusalCode>,
    ) {
        let ack = Ack {
            id,
            ok: false,
            error: Some(reason),
            refusal,
        };
        self.on_ack(ack, kind, reply);
    }

    pub(super) fn on_hello(&mut self, hello: Hello) {
        if self.peer.is_some() {
            return;
        }
        if self.extensions {
            self.conn_send = SendWindow::new(Some(hello.connection_window));
            // Streams opened before the hello have sent nothing yet: grant their first window.
            for stream in self.streams.values_mut().filter(|s| !s.legacy) {
                stream.send_window = SendWindow::new(Some(hello.initial_window));
            }
        }
        self.peer = Some(hello.clone());
        self.wake_blocked_writers();
        self.send_hello();
        self.events.push_back(Event::PeerHello(hello));
    }

    pub(super) fn on_window_update(&mut self, update: WindowUpdate) {
        match update.id {
            None => {
                if !self.conn_send.grant(update.increment) {
                    // A connection-window overflow is the peer's bug; cap it rather than close.
                    self.conn_send = SendWindow::new(Some(i32::MAX as u32));
                }
                self.wake_blocked_writers();
            }
            Some(id) => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return;
                };
                if !stream.send_window.grant(update.increment) {
                    self.violation(id, Violation::WindowOverflow);
                    return;
                }
                if stream.send_blocked && self.conn_send.available() > 0 {
                    stream.send_blocked = false;
                    self.events.push_back(Event::Writable(id));
                }
            }
        }
    }

    /// Returns whether the stream was created.
    pub(super) fn on_open(&mut self, id: StreamId, target: Target, legacy: bool) -> bool {
        if self.role != Role::Server {
            self.violation(id, Violation::OnlyClientOpens);
            return false;
        }
        if self.streams.contains_key(&id) {
            self.violation(id, Violation::DuplicateOpen);
            return false;
        }
        if self.streams.len() >= self.config.max_streams {
            let reason = Error::TooManyStreams(self.config.max_streams).to_string();
            self.send_refusal(id, target.kind(), legacy, RefusalCode::Unavailable, &reason);
            return false;
        }
        self.recently_closed.remove(&id);
        let stream = self.new_stream(target.kind(), legacy, Phase::Incoming);
        self.streams.insert(id, stream);
        self.events.push_back(Event::Incoming { id, target });
        true
    }

    /// Returns whether the stream was accepted.
    pub(super) fn on_ack(&mut self, ack: Ack, kind: Kind, reply: Reply) -> bool {
        let id = ack.id;
        let Some(stream) = self.streams.get_mut(&id) else {
            self.unknown_stream(id);
            return false;
        };
        if stream.phase == Phase::Dead {
            return false;
        }
        if stream.phase != Phase::Opening || stream.kind != kind {
            self.violation(id, Violation::UnexpectedAnswer);
            return false;
        }
        if ack.ok {
            stream.phase = Phase::Open;
            self.events.push_back(Event::Accepted { id, reply });
            true
        } else {
            let refusal = Refusal {
                code: ack.refusal.unwrap_or_default(),
                reason: ack.error.unwrap_or_else(|| "refused by peer".into()),
            };
            self.kill(id, StreamError::Refused(refusal.clone()));
            self.events.push_back(Event::Refused { id, refusal });
            false
        }
    }

    pub(super) fn unknown_stream(&mut self, id: StreamId) {
        if !self.recently_closed.contains(&id) {
            self.violation(id, Violation::UnknownStream);
        }
    }

    pub(super) fn on_data(&mut self, id: StreamId, kind: Kind, chunk: Chunk) {
        let n = chunk.data.len();
        let Some(stream) = self.streams.get_mut(&id) else {
            // Whatever arrives for a stream we do not hold still used connection credit.
            if self.extensions && self.conn_recv.on_receive(n) {
                self.return_connection_credit(n);
            }
            self.unknown_stream(id);
            return;
        };
        let flow = !stream.legacy;
        if flow && !self.conn_recv.on_receive(n) {
            self.violation(id, Violation::ConnectionWindowExceeded);
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let problem = if stream.phase == Phase::Dead {
            None
        } else if stream.kind != kind {
            Some(Violation::WrongKind)
        } else if stream.recv_fin {
            Some(Violation::DataAfterEnd)
        } else if stream.phase == Phase::Opening {
            Some(Violation::DataBeforeAccept)
        } else if flow && !stream.recv_window.on_receive(n) {
            Some(Violation::WindowExceeded)
        } else {
            self.push_chunk(id, chunk);
            return;
        };
        // Dropped bytes give their connection credit back.
        if flow {
            self.return_connection_credit(n);
        }
        if let Some(reason) = problem {
            self.violation(id, reason);
        }
    }

    /// The peer's last byte (`full`: and it will take no more, Go-style close).
    pub(super) fn on_fin(&mut self, id: StreamId, kind: Kind, full: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.unknown_stream(id);
        };
        if stream.phase == Phase::Dead || (full && stream.recv_fin && stream.send_closed) {
            return;
        }
        if stream.kind != kind {
            return self.violation(id, Violation::WrongKind);
        }
        if stream.recv_fin && !full {
            return self.violation(id, Violation::EndTwice);
        }
        // Found by the session fuzzer: an end before the answer, then the answer with a body,
        // delivered data after the end.
        if stream.phase == Phase::Opening {
            return self.violation(id, Violation::EndBeforeAnswer);
        }
        stream.recv_fin = true;
        if full {
            stream.send_closed = true;
            if stream.send_blocked {
                stream.send_blocked = false;
                self.events.push_back(Event::Writable(id));
            }
        }
        self.events.push_back(Event::Readable(id));
    }

    pub(super) fn on_reset(&mut self, id: StreamId, error: StreamError) {
        match self.streams.get_mut(&id) {
            // The peer already sent everything: what it sent stays readable, only our sending
            // direction ends (like a TCP peer that closed after `shutdown(WR)`).
            Some(stream) if stream.phase == Phase::Open && stream.recv_fin => {
                stream.send_closed = true;
                stream.send_blocked = false;
                self.events.push_back(Event::Writable(id));
            }
            Some(stream) if stream.phase != Phase::Dead => {
                self.kill(id, error.clone());
                self.events.push_back(Event::Reset { id, error });
            }
            _ => {}
        }
    }
}
