//! An incremental reader of Server-Sent Events (the WHATWG `text/event-stream` format), fed
//! body chunks as they arrive.
//!
//! Grammar, as read here: the stream is lines ended by `\n`, `\r\n` or `\r`. A blank line
//! dispatches the event gathered so far. `event: <name>` sets its name; each `data: <text>`
//! appends a line to its data (lines joined by `\n`); lines starting with `:` are comments;
//! `id` and `retry` are accepted and ignored; one space after the colon is dropped. An event
//! split across chunks, or several events in one chunk, come out the same. A line, or an
//! event's data, longer than the reader's limit is discarded with its event (counted in
//! `oversized`), so memory stays bounded whatever the upstream sends.

/// Whether a `content-type` value names an SSE stream (`text/event-stream`, any case, with or
/// without parameters).
pub fn is_event_stream(content_type: &[u8]) -> bool {
    content_type
        .windows(17)
        .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` name; empty when none was given (the default type is "message").
    pub name: String,
    pub data: String,
}

#[derive(Debug)]
pub struct SseReader {
    line: Vec<u8>,
    pending: Event,
    has_data: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    /// Inside a line that went over the limit.
    discarding: bool,
    /// The current event lost a line: drop it at its blank line.
    skip_event: bool,
    max_line: usize,
    pub oversized: u64,
}

impl SseReader {
    pub fn new(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            pending: Event::default(),
            has_data: false,
            after_cr: false,
            discarding: false,
            skip_event: false,
            max_line,
            oversized: 0,
        }
    }

    /// Feeds a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(&mut events);
                }
                _ if self.discarding => {}
                _ => {
                    if self.line.len() >= self.max_line {
                        self.discarding = true;
                        self.skip_event = true;
                        self.oversized = self.oversized.saturating_add(1);
                        self.line.clear();
                    } else {
                        self.line.push(b);
                    }
                }
            }
        }
        events
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        if self.discarding {
            self.discarding = false;
            self.line.clear();
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            // An event that lost a line is unusable: drop all of it.
            let skip = std::mem::take(&mut self.skip_event);
            if self.has_data && !skip {
                events.push(std::mem::take(&mut self.pending));
            }
            self.pending = Event::default();
            self.has_data = false;
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.pending.name = value.to_owned(),
            "data" => {
                // An event of many short lines is held to the same limit as one long line.
                let grown = self.pending.data.len().saturating_add(value.len()).saturating_add(1);
                if self.skip_event || grown > self.max_line {
                    if !self.skip_event {
                        self.oversized = self.oversized.saturating_add(1);
                    }
                    self.skip_event = true;
                    self.pending.data = String::new();
                } else {
                    if self.has_data {
                        self.pending.data.push('\n');
                    }
                    self.pending.data.push_str(value);
                }
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_content_types_are_recognised() {
        assert!(is_event_stream(b"text/event-stream"));
        assert!(is_event_stream(b"Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream(b"application/json"));
        assert!(!is_event_stream(b"text/event"));
    }

    fn all(reader: &mut SseReader, chunks: &[&[u8]]) -> Vec<Event> {
        chunks.iter().flat_map(|c| reader.push(c)).collect()
    }

    fn ev(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = b"event: message_delta\ndata: {\"usage\":\n\n: comment\ndata: one\ndata: two\n\n";
        let want = vec![ev("message_delta", "{\"usage\":"), ev("", "one\ntwo")];
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            let mut r = SseReader::new(1024);
            assert_eq!(all(&mut r, &[a, b]), want, "split at {split}");
        }
        let mut r = SseReader::new(1024);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&mut r, &bytes), want, "byte by byte");
    }

    #[test]
    fn crlf_and_cr_line_endings_work_even_split() {
        let mut r = SseReader::new(1024);
        assert_eq!(
            all(&mut r, &[b"data: a\r", b"\n\r", b"\ndata:b\r\r"]),
            vec![ev("", "a"), ev("", "b")]
        );
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut r = SseReader::new(1024);
        assert!(all(&mut r, &[b"data: {\"cut"]).is_empty());
    }

    #[test]
    fn oversized_lines_are_dropped_with_their_event_and_memory_stays_bounded() {
        let mut r = SseReader::new(8);
        let long = vec![b'x'; 10_000];
        let events = all(
            &mut r,
            &[b"data: ", &long, b"\ndata: y\n\ndata: ", &long, b"\n\ndata: ok\n\n"],
        );
        assert_eq!(events, vec![ev("", "ok")]);
        assert_eq!(r.oversized, 2);
        assert!(r.line.capacity() <= 64);
    }

    #[test]
    fn an_event_of_endless_short_lines_is_dropped_and_memory_stays_bounded() {
        let mut r = SseReader::new(64);
        let mut events = Vec::new();
        for _ in 0..100_000 {
            events.extend(r.push(b"data: 0123456789\n"));
            assert!(r.pending.data.len() <= 64);
        }
        events.extend(r.push(b"\ndata: ok\n\n"));
        assert_eq!(events, vec![ev("", "ok")]);
        assert_eq!(r.oversized, 1);
    }
}
