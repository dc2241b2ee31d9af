//! Opening streams: the client's `open`, the server's `accept` and `refuse`.

use super::*;

impl Session {
    /// (Client) opens a stream to `target`; the answer comes as [`Event::Accepted`] or
    /// [`Event::Refused`]. HTTP request bodies may be sent before the answer.
    pub fn open(&mut self, target: Target) -> Result<StreamId> {
        self.check_open()?;
        if self.role != Role::Client {
            return Err(Error::StreamState {
                id: StreamId(0),
                reason: "only the client opens streams",
            });
        }
        if self.streams.len() >= self.config.max_streams {
            return Err(Error::TooManyStreams(self.config.max_streams));
        }
        let id = StreamId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let legacy = !self.extensions;
        let mut stream = self.new_stream(target.kind(), legacy, Phase::Opening);
        match (&target, legacy) {
            (Target::Http { .. }, true) => stream.legacy_target = Some(target),
            (
                Target::Http {
                    method,
                    url,
                    headers,
                },
                false,
            ) => self.emit(&Envelope::HttpRequestHead(HttpRequestHead {
                id,
                method: method.clone(),
                url: url.clone(),
                headers: headers.clone(),
            })),
            (Target::Connect { address }, _) => self.emit(&Envelope::ConnectOpen(ConnectOpen {
                id,
                address: address.clone(),
            })),
            (Target::WebSocket { url, headers }, _) => self.emit(&Envelope::WsOpen(WsOpen {
                id,
                url: url.clone(),
                headers: headers.clone(),
            })),
        }
        self.streams.insert(id, stream);
        Ok(id)
    }

    pub(super) fn new_stream(&self, kind: Kind, legacy: bool, phase: Phase) -> Stream {
        // Until the peer's hello arrives the window is 0: `on_hello` grants the initial window.
        let send_window = (!legacy).then(|| self.peer.as_ref().map_or(0, |h| h.initial_window));
        Stream::new(kind, legacy, phase, self.config.initial_window, send_window)
    }

    /// The stream, if it still waits for our answer to the peer's open.
    pub(super) fn incoming_mut(
        &mut self,
        id: StreamId,
        reason: &'static str,
    ) -> Result<&mut Stream> {
        let stream = self.stream_mut(id)?;
        if stream.phase != Phase::Incoming {
            return Err(Error::StreamState { id, reason });
        }
        Ok(stream)
    }

    /// (Server) accepts an incoming stream.
    pub fn accept(&mut self, id: StreamId, reply: Reply) -> Result<()> {
        self.check_open()?;
        let stream = self.incoming_mut(id, "only an incoming stream can be accepted")?;
        stream.phase = Phase::Open;
        let legacy = stream.legacy;
        match reply {
            Reply::Connect => self.emit(&Envelope::ConnectAck(Ack::accepted(id))),
            Reply::WebSocket => self.emit(&Envelope::WsAck(Ack::accepted(id))),
            Reply::Http {
                status_code,
                headers,
            } if legacy => {
                self.stream_mut(id)?.legacy_reply = Some((status_code, headers));
            }
            Reply::Http {
                status_code,
                headers,
            } => self.emit(&Envelope::HttpResponseHead(HttpResponseHead {
                id,
                status_code,
                headers,
            })),
        }
        Ok(())
    }

    /// (Server) refuses an incoming stream with a code the client can act on (a SOCKS5
    /// reply, an HTTP status) and a reason for people. Go agents see only the reason.
    pub fn refuse(&mut self, id: StreamId, code: RefusalCode, reason: &str) -> Result<()> {
        self.check_open()?;
        let stream = self.incoming_mut(id, "only an incoming stream can be refused")?;
        let (kind, legacy) = (stream.kind, stream.legacy);
        self.kill(id, StreamError::Reset(format!("refused: {reason}")));
        self.send_refusal(id, kind, legacy, code, reason);
        Ok(())
    }

    pub(super) fn send_refusal(
        &mut self,
        id: StreamId,
        kind: Kind,
        legacy: bool,
        code: RefusalCode,
        reason: &str,
    ) {
        let error = Some(reason.to_owned());
        // The code is an extension: a Go peer would ignore it, so it is not sent to one.
        let refusal = (!legacy && code != RefusalCode::Other).then_some(code);
        match kind {
            // Go agents unblock on the ack and release their queue on the close: send both.
            Kind::Connect => {
                self.emit(&Envelope::ConnectAck(Ack {
                    id,
                    ok: false,
                    error: error.clone(),
                    refusal,
                }));
                self.emit(&Envelope::ConnectClose(Close { id, error }));
            }
            Kind::WebSocket => {
                self.emit(&Envelope::WsAck(Ack {
                    id,
                    ok: false,
                    error: error.clone(),
                    refusal,
                }));
                self.emit(&Envelope::WsClose(WsClose {
                    id,
                    code: 1011,
                    error,
                }));
            }
            Kind::Http if legacy => {
                self.emit(&Envelope::HttpResponse(tunnel_error_response(id, reason)))
            }
            Kind::Http => self.emit(&Envelope::StreamReset(StreamReset {
                id,
                error: reason.to_owned(),
                refusal,
            })),
        }
    }
}

/// The Go server's shape for a tunnel-side HTTP failure.
pub(super) fn tunnel_error_response(id: StreamId, reason: &str) -> HttpResponse {
    HttpResponse {
        id,
        status_code: 502,
        headers: Headers::from([("Content-Type".to_owned(), vec!["text/plain".to_owned()])]),
        body: Bytes::from(format!("Tunnel error: {reason}")),
        error: Some(reason.to_owned()),
    }
}
