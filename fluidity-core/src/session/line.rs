//! Whole-body HTTP envelopes for Go peers, streamed both ways.
//!
//! The Go format puts a request's or a response's whole body in one `http_request` or
//! `http_response` envelope (one JSON line). Held whole, a large body would cost its size in
//! memory (and a Go peer's 256 MiB download would have to be refused). Instead:
//!
//! - **Sending.** A body up to `legacy_line_threshold` is held and sent as one envelope, as
//!   before. A larger one becomes the *line in flight*: its head is written at once, then its
//!   body as the application sends it, base64-encoded straight into the output, then the end.
//!   Nothing else can be written inside a JSON line, so until it ends, other envelopes wait in
//!   `deferred` and other streams' writers wait (at most one line is ever in flight). A line
//!   whose body makes no progress for `legacy_line_stall` while the output has room is
//!   abandoned, so the others never wait on it forever. An abandoned line is cut with a mark
//!   outside the base64 alphabet: a Go peer fails to decode that envelope and skips it (it
//!   never takes a short body for a whole one); a Go agent then gets the usual 502 response.
//! - **Receiving.** The JSON codec decodes a long line's head on its own and its body as it
//!   arrives ([`Decoded::LineStart`](crate::codec::Decoded)); the body goes to the stream as
//!   data, under the same backpressure as any Go peer's data (`wants_input`).

use super::send::whole_body_envelope;
use super::*;

/// The line being written.
#[derive(Debug)]
pub(super) struct LineOut {
    /// Its stream.
    id: StreamId,
    /// Body bytes written so far...
    sent: u64,
    /// ...as of the last stall check, and when that was (`None`: not checked yet).
    checked: u64,
    checked_at: Option<Instant>,
}

impl Session {
    /// Queues body bytes of a Go peer's HTTP stream: held while the body is small, streamed
    /// as a line beyond `legacy_line_threshold`. Returns how many were taken.
    pub(super) fn send_whole_body(&mut self, id: StreamId, data: &[u8]) -> Result<usize> {
        if self.line_out.as_ref().is_some_and(|line| line.id == id) {
            let n = self.line_room().min(data.len());
            if n == 0 {
                self.stream_mut(id)?.send_blocked = !data.is_empty();
                return Ok(0);
            }
            self.codec
                .encode_line_body(&data[..n], self.transmit.room_for(base64_len(n)));
            if let Some(line) = &mut self.line_out {
                line.sent += n as u64;
            }
            return Ok(n);
        }
        let threshold = self.config.legacy_line_threshold;
        let held = self.stream_mut(id)?.legacy_body.len();
        if held + data.len() > threshold && self.line_out.is_none() && self.line_room() > 0 {
            self.start_line(id)?;
            return self.send_whole_body(id, data);
        }
        // Hold what fits (under the threshold and the connection's budget); the rest waits
        // for the line in flight to end.
        let n = threshold
            .saturating_sub(held)
            .min(self.legacy_capacity(id, held))
            .min(data.len());
        let stream = self.stream_mut(id)?;
        if n == 0 {
            stream.send_blocked = !data.is_empty();
            return Ok(0);
        }
        stream.legacy_body.extend_from_slice(&data[..n]);
        if held == 0 {
            self.legacy_holders.push_back(id);
        }
        self.legacy_held += n;
        Ok(n)
    }

    /// Body bytes the output has room for (base64 grows them by a third).
    pub(super) fn line_room(&self) -> usize {
        self.config
            .transmit_high_water
            .saturating_sub(self.transmit.len())
            / 4
            * 3
    }

    /// Makes `id` the line in flight: writes its head and the body held so far.
    fn start_line(&mut self, id: StreamId) -> Result<()> {
        let stream = self.stream_mut(id)?;
        let Some(envelope) = whole_body_envelope(stream, id, Bytes::new()) else {
            return Err(Error::StreamState {
                id,
                reason: "no request or response head to send the body with",
            });
        };
        let body = stream.legacy_body.split().freeze();
        self.legacy_release(id, body.len());
        self.codec
            .encode_line_start(&envelope, self.transmit.room_for(CONTROL_FRAME))?;
        self.codec
            .encode_line_body(&body, self.transmit.room_for(base64_len(body.len())));
        tracing::debug!(%id, "streaming a whole-body envelope for a Go peer");
        self.line_out = Some(LineOut {
            id,
            sent: body.len() as u64,
            checked: 0,
            checked_at: None,
        });
        Ok(())
    }

    /// Whether `id` is the line in flight.
    pub(super) fn is_line_out(&self, id: StreamId) -> bool {
        self.line_out.as_ref().is_some_and(|line| line.id == id)
    }

    /// Ends the line in flight (`aborted`: cut short, with the reason), then lets everything
    /// that waited for it go.
    pub(super) fn end_line(&mut self, aborted: Option<&str>) {
        if self.line_out.take().is_none() {
            return;
        }
        self.codec
            .encode_line_end(aborted, self.transmit.room_for(CONTROL_FRAME));
        let deferred = self.deferred.split().freeze();
        self.transmit.push(deferred);
        self.wake_blocked_writers();
    }

    /// When the line in flight is next checked for a stall.
    pub(super) fn line_check(&self) -> Option<Instant> {
        let line = self.line_out.as_ref()?;
        Some(match line.checked_at {
            None => self.now,
            Some(at) => at + self.config.legacy_line_stall,
        })
    }

    /// Abandons the line in flight if its body made no progress since the last check while
    /// the output had room for it.
    pub(super) fn check_line(&mut self, now: Instant) {
        let stall = self.config.legacy_line_stall;
        let room = self.line_room() > 0;
        let Some(line) = &mut self.line_out else {
            return;
        };
        match line.checked_at {
            Some(at) if now < at + stall => {}
            Some(_) if line.sent == line.checked && room => {
                let id = line.id;
                tracing::info!(%id, ?stall, "a streamed body stalled; abandoning it");
                // Reported to the application too: whoever waits for this stream's answer
                // would otherwise wait forever (a Go peer skips the cut line, never answers).
                self.abort_stream(
                    id,
                    StreamError::Reset(format!(
                        "the body made no progress for {stall:?} while it held the tunnel's output"
                    )),
                );
            }
            _ => {
                line.checked = line.sent;
                line.checked_at = Some(now);
            }
        }
    }

    /// The head of the peer's streamed line: a request opens a stream, a response answers
    /// one; the body follows.
    pub(super) fn on_line_start(&mut self, envelope: Envelope) {
        let id = match envelope {
            Envelope::HttpRequest(r) if !self.extensions => {
                let target = Target::Http {
                    method: r.method,
                    url: r.url,
                    headers: r.headers,
                };
                // A whole request: the reply must be whole too, whatever the peer announced.
                self.on_open(r.id, target, true);
                r.id
            }
            Envelope::HttpResponse(r) if !self.extensions => {
                let reply = Reply::Http {
                    status_code: r.status_code,
                    headers: r.headers,
                };
                if self.on_ack(Ack::accepted(r.id), Kind::Http, reply)
                    && let Some(stream) = self.streams.get_mut(&r.id)
                {
                    stream.send_closed = true;
                }
                r.id
            }
            // Lines exist only in the JSON codec, and binary sessions have no JSON.
            other => {
                tracing::debug!(kind = other.type_name(), "ignoring an unexpected line");
                self.line_in = None;
                return;
            }
        };
        self.line_in = Some(id);
    }

    /// The next piece of the peer's streamed body (dropped if its stream is gone).
    pub(super) fn on_line_body(&mut self, data: Bytes) {
        let Some(id) = self.line_in else {
            return;
        };
        let alive = self
            .streams
            .get(&id)
            .is_some_and(|s| s.phase != Phase::Dead && !s.recv_fin);
        if alive && !data.is_empty() {
            self.push_chunk(id, Chunk::plain(data));
        }
    }

    /// The end of the peer's streamed line: the body is complete, or was abandoned.
    pub(super) fn on_line_end(&mut self, aborted: Option<String>) {
        let Some(id) = self.line_in.take() else {
            return;
        };
        match aborted {
            Some(reason) => {
                self.on_reset(
                    id,
                    StreamError::PeerReset(format!("body aborted: {reason}")),
                );
            }
            None => {
                if let Some(stream) = self.streams.get_mut(&id)
                    && stream.phase != Phase::Dead
                    && !stream.recv_fin
                {
                    stream.recv_fin = true;
                    self.events.push_back(Event::Readable(id));
                }
            }
        }
    }
}
