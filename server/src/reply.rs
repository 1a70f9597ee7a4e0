//! The text of a reply as it streams: ids are detokenized incrementally (multi-byte characters
//! come out whole), and stop strings end the reply — the text from a stop string on is never
//! sent, and text that could still turn into a stop string is held back until it cannot.

use blip3_processor::TextStream;

/// What the next piece of a reply is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Text safe to send now (may be empty).
    pub text: String,
    /// A stop string was found: the reply ends after `text`.
    pub stopped: bool,
}

/// A reply's text with stop-string handling.
pub struct ReplyText<'a> {
    stream: TextStream<'a>,
    stops: Vec<String>,
    sent: usize,
    stopped: bool,
}

impl<'a> ReplyText<'a> {
    /// Wraps a detokenizer; `stops` are the request's stop strings (empty ones are ignored).
    pub fn new(stream: TextStream<'a>, stops: Vec<String>) -> Self {
        ReplyText {
            stream,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a generated id.
    pub fn push(&mut self, id: u32) -> Piece {
        if self.stopped {
            return Piece {
                text: String::new(),
                stopped: true,
            };
        }
        self.stream.push(id);
        self.advance(false)
    }

    /// The rest of the text when the sequence has ended (nothing is held back any more).
    pub fn finish(&mut self) -> Piece {
        if self.stopped {
            return Piece {
                text: String::new(),
                stopped: true,
            };
        }
        self.advance(true)
    }

    /// The whole reply so far, cut at a stop string.
    pub fn text(&self) -> &str {
        &self.stream.text()[..self.sent]
    }

    fn advance(&mut self, at_end: bool) -> Piece {
        let full = self.stream.text();
        // The earliest stop string starting at or after what could not yet be ruled out.
        let search_from = floor_boundary(full, self.sent.saturating_sub(self.longest_stop()));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                full[search_from..]
                    .find(s.as_str())
                    .map(|p| search_from + p)
            })
            .min();
        if let Some(at) = hit {
            let text = full[self.sent.min(at)..at].to_string();
            self.sent = self.sent.max(at);
            self.stopped = true;
            return Piece {
                text,
                stopped: true,
            };
        }
        let end = if at_end {
            full.len()
        } else {
            full.len() - self.held_back(full)
        };
        let end = floor_boundary(full, end).max(self.sent);
        let text = full[self.sent..end].to_string();
        self.sent = end;
        Piece {
            text,
            stopped: false,
        }
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Bytes at the end of `full` that are a proper prefix of some stop string.
    fn held_back(&self, full: &str) -> usize {
        let mut hold = 0;
        for stop in &self.stops {
            for len in (1..stop.len()).rev() {
                if len <= full.len()
                    && stop.is_char_boundary(len)
                    && full.is_char_boundary(full.len() - len)
                    && full.ends_with(&stop[..len])
                {
                    hold = hold.max(len);
                    break;
                }
            }
        }
        hold
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
