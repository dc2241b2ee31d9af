//! Whole-body envelopes for Go peers streamed as one line: what crosses, what waits, and what
//! a line cut short looks like.

use super::*;

const THRESHOLD: usize = 64 << 10;

fn line_pair() -> Pair {
    Pair::with_config(
        CodecKind::Json,
        SessionConfig {
            legacy_line_threshold: THRESHOLD,
            ..config()
        },
    )
}

/// Opens a GET (no body) and has the server accept it with 200.
fn get(p: &mut Pair, url: &str) -> StreamId {
    let id = p
        .client
        .open(Target::Http {
            method: "GET".into(),
            url: url.into(),
            headers: Headers::new(),
        })
        .unwrap();
    p.client.finish(id).unwrap();
    p.pump();
    let reply = Reply::Http {
        status_code: 200,
        headers: Headers::new(),
    };
    p.server.accept(id, reply).unwrap();
    id
}

#[test]
fn a_large_body_streams_inside_one_line_while_everything_else_waits() {
    let mut p = line_pair();
    let big = get(&mut p, "http://x/big");
    let small = get(&mut p, "http://x/small");
    let tcp = p.connect("x:1");
    p.drain_events();
    let body = pattern(1, 0, 300 << 10);
    assert_eq!(p.server.send(big, &body[..100 << 10]).unwrap(), 100 << 10);
    assert!(p.server.is_line_out(big));
    // While the line is in flight: a small body is held and its envelope waits; a CONNECT
    // writer gets no room.
    assert_eq!(p.server.send(small, b"small body").unwrap(), 10);
    p.server.finish(small).unwrap();
    assert_eq!(p.server.send_capacity(tcp), 0);
    assert_eq!(p.server.send(tcp, b"waits").unwrap(), 0);
    p.pump();
    let (client_events, _) = p.drain_events();
    assert!(
        client_events
            .iter()
            .any(|e| matches!(e, Event::Accepted { id, .. } if *id == big)),
        "the head went out at once: {client_events:?}"
    );
    assert!(
        !client_events
            .iter()
            .any(|e| matches!(e, Event::Accepted { id, .. } if *id == small)),
        "the small response waits for the line: {client_events:?}"
    );
    let (first, done) = read_all(&mut p.client, big);
    assert!(!done && !first.is_empty() && first.len() <= 100 << 10);
    // The rest, then the end: the waiting envelope and writer go.
    assert_eq!(p.server.send(big, &body[100 << 10..]).unwrap(), 200 << 10);
    p.server.finish(big).unwrap();
    assert!(!p.server.is_line_out(big));
    let server_events: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
    assert!(
        server_events.contains(&Event::Writable(tcp)),
        "{server_events:?}"
    );
    p.pump();
    let (rest, done) = read_all(&mut p.client, big);
    assert!(done);
    assert_eq!([first, rest].concat(), body);
    assert_eq!(
        read_all(&mut p.client, small),
        (b"small body".to_vec(), true)
    );
}

#[test]
fn a_line_cut_short_reads_as_aborted_never_as_complete() {
    let mut p = line_pair();
    let big = get(&mut p, "http://x/big");
    p.server.send(big, &pattern(2, 0, 200 << 10)).unwrap();
    p.pump();
    p.drain_events();
    p.server.reset(big, "the target failed").unwrap();
    p.pump();
    let mut received = 0;
    let err = loop {
        match p.client.recv(big, usize::MAX) {
            Ok(Recv::Data(chunk)) => received += chunk.data.len(),
            Ok(other) => panic!("a cut line must not end cleanly: {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(received < 200 << 10);
    assert!(
        matches!(&err, Error::Stream { error: StreamError::PeerReset(reason), .. }
            if reason.contains("the target failed")),
        "{err}"
    );
    // The 502 that follows for a Go agent is dropped quietly by a Rust client.
    let (client_events, _) = p.drain_events();
    assert!(
        !client_events.iter().any(|e| matches!(
            e,
            Event::Reset {
                error: StreamError::Violation(_),
                ..
            }
        )),
        "{client_events:?}"
    );
    assert!(p.client.closed_reason().is_none());
}

#[test]
fn a_stalled_line_is_abandoned_and_the_others_go_on() {
    let mut p = line_pair();
    let stall = p.server.config.legacy_line_stall;
    let big = get(&mut p, "http://x/big");
    let small = get(&mut p, "http://x/small");
    p.server.send(big, &pattern(3, 0, 100 << 10)).unwrap();
    p.server.send(small, b"small").unwrap();
    p.server.finish(small).unwrap();
    p.pump();
    // The first check notes the progress so far; with none by the next, the line is cut.
    let check = p.server.poll_timeout().unwrap();
    p.server.handle_timeout(check);
    assert!(p.server.is_line_out(big));
    p.server.handle_timeout(check + stall / 2);
    assert!(p.server.is_line_out(big), "not before a whole interval");
    p.server.handle_timeout(check + stall);
    assert!(!p.server.is_line_out(big));
    let events: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Reset { id, .. } if *id == big)),
        "the application learns that the line was abandoned: {events:?}"
    );
    p.pump();
    assert!(
        p.client.recv(big, usize::MAX).is_err() || {
            read_all(&mut p.client, big);
            p.client.recv(big, usize::MAX).is_err()
        }
    );
    assert_eq!(read_all(&mut p.client, small), (b"small".to_vec(), true));
}

/// The client opens `POST http://x/upload`.
fn open_upload(p: &mut Pair) -> StreamId {
    p.client
        .open(Target::Http {
            method: "POST".into(),
            url: "http://x/upload".into(),
            headers: Headers::new(),
        })
        .unwrap()
}

/// An agent's upload that stalls is abandoned, and the agent's application learns it at
/// once: a Go server skips the cut line and never answers, so whoever waits for the answer
/// would wait forever. (The agent hung like this under load.)
#[test]
fn a_stalled_upload_line_ends_the_wait_for_its_answer() {
    let mut p = line_pair();
    let stall = p.client.config.legacy_line_stall;
    let id = open_upload(&mut p);
    // More than the threshold: the body becomes a streamed line, then stops coming.
    let body = pattern(5, 0, 200 << 10);
    let mut sent = 0;
    while sent < body.len() {
        sent += p.client.send(id, &body[sent..]).unwrap();
        p.pump();
    }
    assert!(p.client.is_line_out(id));
    while p.client.poll_event().is_some() {}
    let check = p.client.poll_timeout().unwrap();
    p.client.handle_timeout(check);
    p.client.handle_timeout(check + stall);
    assert!(!p.client.is_line_out(id));
    let events: Vec<Event> = std::iter::from_fn(|| p.client.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Reset { id: reset, .. } if *reset == id)),
        "{events:?}"
    );
}

#[test]
fn a_large_upload_streams_inside_one_line() {
    let mut p = line_pair();
    let id = open_upload(&mut p);
    let body = pattern(4, 0, 500 << 10);
    let mut sent = 0;
    while sent < body.len() {
        let n = p.client.send(id, &body[sent..]).unwrap();
        sent += n;
        p.pump();
        if n == 0 {
            // The server must read for the line to move on.
            read_all(&mut p.server, id);
        }
    }
    assert!(p.client.is_line_out(id));
    p.client.finish(id).unwrap();
    p.pump();
    let (_, server_events) = p.drain_events();
    assert!(
        server_events.iter().any(|e| matches!(e, Event::Incoming { id: i, target: Target::Http { method, .. } } if *i == id && method == "POST")),
        "{server_events:?}"
    );
    let mut received = Vec::new();
    loop {
        let (data, done) = read_all(&mut p.server, id);
        received.extend(data);
        if done {
            break;
        }
        p.pump();
    }
    assert_eq!(received, body);
}
