//! Sending: credit, the output buffer's room, whole bodies for Go peers, the end of a
//! stream and resets.

use super::*;

impl Session {
    /// How many bytes [`Session::send`] would take now on this stream.
    pub fn send_capacity(&self, id: StreamId) -> usize {
        let Some(stream) = self.streams.get(&id) else {
            return 0;
        };
        if stream.legacy && stream.kind == Kind::Http {
            if self.is_line_out(id) {
                return self.line_room();
            }
            let held = stream.legacy_body.len();
            return self
                .config
                .legacy_line_threshold
                .saturating_sub(held)
                .min(self.legacy_capacity(id, held));
        }
        // Nothing else can be written while a streamed line is in flight.
        if self.line_out.is_some() {
            return 0;
        }
        let room = self
            .config
            .transmit_high_water
            .saturating_sub(self.transmit.len());
        if room == 0 {
            return 0;
        }
        let mut cap = room.max(self.config.max_chunk);
        if !stream.legacy {
            cap = cap
                .min(stream.send_window.available())
                .min(self.conn_send.available());
        }
        cap
    }

    /// How much more of a whole body stream `id` (holding `held`) may buffer now: up to its
    /// own limit, within the connection-wide budget unless it is the oldest holder.
    pub(super) fn legacy_capacity(&self, id: StreamId, held: usize) -> usize {
        let own = self.config.legacy_line_threshold.saturating_sub(held);
        let first = self.legacy_holders.front().is_none_or(|front| *front == id);
        if first {
            own
        } else {
            own.min(
                self.config
                    .max_legacy_buffered
                    .saturating_sub(self.legacy_held),
            )
        }
    }

    /// Stream `id` no longer holds a whole body (sent, reset or dropped).
    pub(super) fn legacy_release(&mut self, id: StreamId, held: usize) {
        if held == 0 {
            return;
        }
        self.legacy_held -= held;
        self.legacy_holders.retain(|holder| *holder != id);
        self.wake_blocked_writers();
    }

    pub(super) fn writable_stream(&mut self, id: StreamId) -> Result<&mut Stream> {
        let stream = self.stream_mut(id)?;
        if let Some(error) = &stream.error {
            return Err(Error::Stream {
                id,
                error: error.clone(),
            });
        }
        let reason = match stream.phase {
            Phase::Incoming => Some("accept the stream before sending"),
            // A Go server drops CONNECT/WebSocket data that arrives before its ack.
            Phase::Opening if stream.legacy && stream.kind != Kind::Http => {
                Some("wait for the peer's ack before sending")
            }
            _ if stream.send_fin => Some("send after finish"),
            _ if stream.send_closed => Some("the peer closed the stream"),
            _ => None,
        };
        match reason {
            Some(reason) => Err(Error::StreamState { id, reason }),
            None => Ok(stream),
        }
    }

    /// Queues up to `data.len()` bytes on a byte stream (HTTP body or CONNECT). Returns how many
    /// were taken; 0 means wait for [`Event::Writable`].
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize> {
        self.check_open()?;
        let stream = self.writable_stream(id)?;
        if stream.kind == Kind::WebSocket {
            return Err(Error::StreamState {
                id,
                reason: "WebSocket streams carry messages: use send_message",
            });
        }
        if stream.legacy && stream.kind == Kind::Http {
            return self.send_whole_body(id, data);
        }
        let n = self.send_capacity(id).min(data.len());
        let (kind, legacy) = {
            let stream = self.stream_mut(id)?;
            if n == 0 {
                stream.send_blocked = !data.is_empty();
                return Ok(0);
            }
            stream.send_window.consume(n);
            (stream.kind, stream.legacy)
        };
        if !legacy {
            self.conn_send.consume(n);
        }
        for piece in data[..n].chunks(self.config.max_chunk) {
            let frame = if kind == Kind::Http {
                DataFrame::Body(id, piece)
            } else {
                DataFrame::Connect(id, piece)
            };
            self.emit_data(frame);
        }
        Ok(n)
    }

    /// Sends one whole WebSocket message. `Ok(false)` means no room yet: wait for
    /// [`Event::Writable`].
    pub fn send_message(&mut self, id: StreamId, ws_type: u8, data: &[u8]) -> Result<bool> {
        self.check_open()?;
        let max = self.config.max_frame_size.min(
            self.peer
                .as_ref()
                .map_or(usize::MAX, |h| h.max_frame_size as usize),
        );
        let peer_windows = self
            .peer
            .as_ref()
            .map(|peer| peer.initial_window.min(peer.connection_window) as usize);
        let stream = self.writable_stream(id)?;
        if stream.kind != Kind::WebSocket {
            return Err(Error::StreamState {
                id,
                reason: "send_message is for WebSocket streams",
            });
        }
        // Base64 and the envelope around it must fit the peer's frame limit.
        if data.len() > (max / 4 * 3).saturating_sub(256) {
            return Err(Error::StreamState {
                id,
                reason: "WebSocket message larger than the frame limit",
            });
        }
        // A message is sent whole, so it must fit the peer's receive windows: waiting for
        // more credit than the peer can ever grant would stall the stream forever.
        if !stream.legacy
            && let Some(windows) = peer_windows
            && data.len() > windows
        {
            return Err(Error::StreamState {
                id,
                reason: "WebSocket message larger than the peer's receive window",
            });
        }
        if self.send_capacity(id) < data.len().max(1) {
            self.stream_mut(id)?.send_blocked = true;
            return Ok(false);
        }
        let stream = self.stream_mut(id)?;
        stream.send_window.consume(data.len());
        if !stream.legacy {
            self.conn_send.consume(data.len());
        }
        self.emit_data(DataFrame::WebSocket(id, ws_type, data));
        Ok(true)
    }

    /// Ends our sending direction (half-close). For Go peers, which have no half-close, a
    /// CONNECT stream is closed fully and an HTTP body is sent whole now.
    pub fn finish(&mut self, id: StreamId) -> Result<()> {
        self.check_open()?;
        let stream = self.stream_mut(id)?;
        if stream.send_fin {
            return Ok(());
        }
        if let Some(error) = &stream.error {
            return Err(Error::Stream {
                id,
                error: error.clone(),
            });
        }
        if stream.phase == Phase::Incoming {
            return Err(Error::StreamState {
                id,
                reason: "accept the stream before finishing it",
            });
        }
        stream.send_fin = true;
        if self.is_line_out(id) {
            self.end_line(None);
            return Ok(());
        }
        let stream = self.stream_mut(id)?;
        let held = stream.legacy_body.len();
        let envelope = match (stream.kind, stream.legacy) {
            (Kind::Http, true) => {
                let body = stream.legacy_body.split().freeze();
                self.legacy_release(id, held);
                let stream = self.stream_mut(id)?;
                let Some(envelope) = whole_body_envelope(stream, id, body) else {
                    return Ok(());
                };
                envelope
            }
            (Kind::Http, false) => Envelope::BodyEnd(Close { id, error: None }),
            (Kind::Connect, true) => Envelope::ConnectClose(Close { id, error: None }),
            (Kind::Connect, false) => Envelope::ConnectFin(Close { id, error: None }),
            (Kind::WebSocket, _) => Envelope::WsClose(WsClose {
                id,
                code: 1000,
                error: None,
            }),
        };
        self.emit(&envelope);
        Ok(())
    }

    /// Closes a WebSocket stream with a close code and reason (both directions).
    pub fn close_websocket(&mut self, id: StreamId, code: u16, reason: &str) -> Result<()> {
        self.check_open()?;
        let stream = self.stream_mut(id)?;
        if stream.kind != Kind::WebSocket {
            return Err(Error::StreamState {
                id,
                reason: "not a WebSocket stream",
            });
        }
        if stream.send_fin {
            return Ok(());
        }
        stream.send_fin = true;
        let error = (!reason.is_empty()).then(|| reason.to_owned());
        self.emit(&Envelope::WsClose(WsClose { id, code, error }));
        Ok(())
    }

    /// Aborts a stream in both directions; the peer learns `reason`.
    pub fn reset(&mut self, id: StreamId, reason: &str) -> Result<()> {
        self.check_open()?;
        self.stream_mut(id)?;
        self.reset_with(id, StreamError::Reset(reason.to_owned()));
        Ok(())
    }

    /// Kills a live stream with `error` and tells the peer (the error's text is the reason
    /// it reads).
    /// The session itself gives up on stream `id` (a protocol violation, a stalled line):
    /// resets it like [`Session::reset_with`] and tells the application, which did not ask
    /// for it and may be waiting on the stream.
    pub(super) fn abort_stream(&mut self, id: StreamId, error: StreamError) {
        self.reset_with(id, error.clone());
        self.events.push_back(Event::Reset { id, error });
    }

    pub(super) fn reset_with(&mut self, id: StreamId, error: StreamError) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if stream.phase == Phase::Dead || self.closed.is_some() {
            return;
        }
        let (kind, legacy, phase) = (stream.kind, stream.legacy, stream.phase);
        // A response cut short in its streamed line still owes a Go agent its one answer.
        let reply_pending = stream.legacy_reply.is_some()
            || (phase == Phase::Incoming && kind == Kind::Http)
            || (self.is_line_out(id) && self.role == Role::Server);
        let reason = match &error {
            StreamError::Reset(reason) => reason.clone(),
            other => other.to_string(),
        };
        self.kill(id, error);
        self.send_reset(id, kind, legacy, &reason, reply_pending);
    }

    pub(super) fn send_reset(
        &mut self,
        id: StreamId,
        kind: Kind,
        legacy: bool,
        reason: &str,
        reply_pending: bool,
    ) {
        let error = Some(reason.to_owned());
        if !legacy {
            self.emit(&Envelope::StreamReset(StreamReset {
                id,
                error: reason.to_owned(),
                refusal: None,
            }));
            return;
        }
        match kind {
            Kind::Connect => self.emit(&Envelope::ConnectClose(Close { id, error })),
            Kind::WebSocket => self.emit(&Envelope::WsClose(WsClose {
                id,
                code: 1011,
                error,
            })),
            // A Go agent waits for exactly one response per request.
            Kind::Http if self.role == Role::Server && reply_pending => {
                self.emit(&Envelope::HttpResponse(tunnel_error_response(id, reason)))
            }
            // Client: nothing sent yet, or the Go server answers once anyway (dropped on arrival).
            Kind::Http => {}
        }
    }
}

/// The one envelope that carries a Go peer's whole HTTP message: the request or response
/// head `stream` still holds, with `body`. `None` once the head has gone out.
pub(super) fn whole_body_envelope(
    stream: &mut Stream,
    id: StreamId,
    body: Bytes,
) -> Option<Envelope> {
    match (stream.legacy_target.take(), stream.legacy_reply.take()) {
        (
            Some(Target::Http {
                method,
                url,
                headers,
            }),
            _,
        ) => Some(Envelope::HttpRequest(HttpRequest {
            id,
            method,
            url,
            headers,
            body,
        })),
        (_, Some((status_code, headers))) => Some(Envelope::HttpResponse(HttpResponse {
            id,
            status_code,
            headers,
            body,
            error: None,
        })),
        _ => None,
    }
}
