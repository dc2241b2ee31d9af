//! Receiving: queued data, credit returned as the application consumes it, and a stream's
//! release.

use super::*;

impl Session {
    /// Takes received data: up to `max` bytes of a byte stream, or one whole WebSocket message.
    /// Consuming returns credit to the peer.
    pub fn recv(&mut self, id: StreamId, max: usize) -> Result<Recv> {
        let stream = self.stream_mut(id)?;
        if let Some(error) = &stream.error {
            return Err(Error::Stream {
                id,
                error: error.clone(),
            });
        }
        let Some(front) = stream.recv.front_mut() else {
            return Ok(if stream.recv_fin {
                Recv::End
            } else {
                Recv::Pending
            });
        };
        let chunk = if front.ws_type != 0 || front.data.len() <= max {
            stream.recv.pop_front().unwrap_or(Chunk {
                data: Bytes::new(),
                ws_type: 0,
            })
        } else {
            Chunk {
                data: front.data.split_to(max),
                ws_type: 0,
            }
        };
        let n = chunk.data.len();
        stream.recv_buffered -= n;
        let (legacy, fin) = (stream.legacy, stream.recv_fin);
        if legacy {
            self.legacy_buffered -= n;
        } else {
            let stream_grant = if fin {
                None
            } else {
                stream.recv_window.on_consume(n)
            };
            if let Some(increment) = stream_grant {
                self.emit(&Envelope::WindowUpdate(WindowUpdate {
                    id: Some(id),
                    increment,
                }));
            }
            self.return_connection_credit(n);
        }
        Ok(Recv::Data(chunk))
    }

    pub(super) fn return_connection_credit(&mut self, n: usize) {
        if let Some(increment) = self.conn_recv.on_consume(n) {
            self.emit(&Envelope::WindowUpdate(WindowUpdate {
                id: None,
                increment,
            }));
        }
    }

    pub(super) fn push_whole_body(&mut self, id: StreamId, body: Bytes) {
        if !body.is_empty() {
            self.push_chunk(
                id,
                Chunk {
                    data: body,
                    ws_type: 0,
                },
            );
        }
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.recv_fin = true;
            self.events.push_back(Event::Readable(id));
        }
    }

    /// Queues received data (no checks: callers validated it).
    pub(super) fn push_chunk(&mut self, id: StreamId, mut chunk: Chunk) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let n = chunk.data.len();
        if self.extensions && n < ZERO_COPY_MIN {
            // Own a small chunk, so it keeps at most its own size alive (see ZERO_COPY_MIN).
            chunk.data = Bytes::copy_from_slice(&chunk.data);
        }
        let was_empty = stream.recv.is_empty();
        stream.recv.push_back(chunk);
        stream.recv_buffered += n;
        if stream.legacy {
            self.legacy_buffered += n;
        }
        if was_empty {
            self.events.push_back(Event::Readable(id));
        }
    }

    /// The application is done with the stream (its handle was dropped). A stream not yet
    /// finished both ways is reset.
    pub fn release(&mut self, id: StreamId) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if self.closed.is_none() && stream.phase != Phase::Dead && !stream.is_done() {
            self.reset_with(
                id,
                StreamError::Reset("stream dropped by the application".into()),
            );
        }
        if let Some(stream) = self.streams.remove(&id) {
            if stream.legacy {
                self.legacy_buffered -= stream.recv_buffered;
            } else if self.closed.is_none() {
                self.return_connection_credit(stream.recv_buffered);
            }
            self.legacy_release(id, stream.legacy_body.len());
        }
        self.remember_closed(id);
    }

    pub(super) fn remember_closed(&mut self, id: StreamId) {
        if self.recently_closed.insert(id) {
            self.recently_closed_order.push_back(id);
            if self.recently_closed_order.len() > RECENTLY_CLOSED
                && let Some(old) = self.recently_closed_order.pop_front()
            {
                self.recently_closed.remove(&old);
            }
        }
    }

    /// Marks a stream dead, drops its unread data (returning its connection credit) and wakes
    /// its reader and writer.
    pub(super) fn kill(&mut self, id: StreamId, error: StreamError) {
        if self.is_line_out(id) {
            // Cut the line, so the peer never takes what was written for the whole body.
            self.end_line(Some(&error.to_string()));
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.phase = Phase::Dead;
        stream.error = Some(error);
        stream.recv.clear();
        let dropped = std::mem::take(&mut stream.recv_buffered);
        let held = std::mem::take(&mut stream.legacy_body).len();
        if stream.legacy {
            self.legacy_buffered -= dropped;
        } else {
            self.return_connection_credit(dropped);
        }
        self.legacy_release(id, held);
    }
}
