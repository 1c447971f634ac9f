//! Terminal output shared by `tether call … watch` and `tether demo`: ANSI
//! colours (only on a terminal, and never with `NO_COLOR`), timestamps, and
//! the human wording of connection events.

use std::fmt::Display;
use std::io::IsTerminal;
use std::time::SystemTime;

use tether_client::{ConnectionEvent, Method};

/// What a piece of text means, which decides its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tone {
    /// Success, a healthy state (green).
    Good,
    /// A failure (red).
    Bad,
    /// Something degraded or worth attention (yellow).
    Warn,
    /// Neutral information worth noticing (cyan).
    Info,
    /// Details (dim).
    Dim,
    /// Headings and numbers (bold).
    Bold,
}

impl Tone {
    fn sgr(self) -> &'static str {
        match self {
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Warn => "33",
            Tone::Info => "36",
            Tone::Dim => "2",
            Tone::Bold => "1",
        }
    }
}

/// Paints text with ANSI colours, or leaves it alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Paint {
    on: bool,
}

impl Paint {
    /// Colours for stdout: on when stdout is a terminal and `NO_COLOR` is
    /// unset or empty (<https://no-color.org>).
    pub(crate) fn stdout() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self { on: stdout_is_terminal() && !no_color }
    }

    /// `text` in `tone`.
    pub(crate) fn paint(&self, tone: Tone, text: impl Display) -> String {
        if self.on { format!("\x1b[{}m{text}\x1b[0m", tone.sgr()) } else { text.to_string() }
    }
}

/// True when stdout is a terminal (where a status line may be redrawn in place).
pub(crate) fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// `now` as RFC 3339 UTC with milliseconds (`2025-01-31T12:34:56.789Z`).
pub(crate) fn rfc3339(now: SystemTime) -> String {
    humantime::format_rfc3339_millis(now).to_string()
}

/// `now` as a UTC clock time with milliseconds (`12:34:56.789`), like the
/// time stamps of tether's logs.
pub(crate) fn clock(now: SystemTime) -> String {
    let full = rfc3339(now);
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`: keep `HH:MM:SS.mmm`.
    full.get(11..23).map_or(full.clone(), str::to_owned)
}

/// A transport's name for people.
pub(crate) fn method_name(method: Method) -> &'static str {
    match method {
        Method::Grpc => "direct gRPC",
        Method::Webrtc => "WebRTC",
    }
}

/// Milliseconds, rounded sensibly for people (`0.42 ms`, `12 ms`).
pub(crate) fn ms(value: f64) -> String {
    if value < 10.0 { format!("{value:.2} ms") } else { format!("{value:.0} ms") }
}

/// A connection event for people: a symbol, a tone and a sentence.
pub(crate) fn describe(event: &ConnectionEvent) -> (&'static str, Tone, String) {
    match event {
        ConnectionEvent::Connecting => ("…", Tone::Dim, "connecting".to_owned()),
        ConnectionEvent::Dialing { method, attempt } => {
            ("…", Tone::Dim, format!("dialing over {} (attempt {attempt})", method_name(*method)))
        }
        ConnectionEvent::Connected { method, candidate_pair, rtt_ms, reconnected } => {
            let verb = if *reconnected { "reconnected" } else { "connected" };
            let mut text = format!("{verb} over {}", method_name(*method));
            if let Some(pair) = candidate_pair {
                text.push_str(&format!(", candidate pair {pair}"));
            }
            if let Some(rtt) = rtt_ms {
                text.push_str(&format!(", rtt {}", ms(*rtt)));
            }
            ("●", Tone::Good, text)
        }
        ConnectionEvent::SessionResumed { id } => {
            ("✓", Tone::Good, format!("session {id} resumed: the machine stopped nothing"))
        }
        ConnectionEvent::SessionLapsed { old, new } => (
            "!",
            Tone::Warn,
            format!(
                "session {old} lapsed during the outage (the machine stopped what it controlled); new session {new}"
            ),
        ),
        ConnectionEvent::StreamRestored { camera } => {
            ("✓", Tone::Good, format!("{camera}'s video stream added again on the new connection"))
        }
        ConnectionEvent::IceRestarted { reason, took_ms, candidate_pair } => (
            "✓",
            Tone::Good,
            format!(
                "network changed ({reason}): ICE restarted in {took_ms:.0} ms, same connection{}",
                candidate_pair.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
            ),
        ),
        ConnectionEvent::IceRestartFailed { reason, error } => {
            ("!", Tone::Bad, format!("network changed ({reason}): ICE restart failed ({error}); reconnecting"))
        }
        ConnectionEvent::Reconnecting { error } => {
            // The client's usual reason is just "connection lost": say it once.
            let why = match error.as_deref() {
                Some(e) if e != "connection lost" => format!(" ({e})"),
                _ => String::new(),
            };
            ("↻", Tone::Warn, format!("connection lost{why}; reconnecting"))
        }
        ConnectionEvent::RetryScheduled { attempt, delay_ms } => {
            ("…", Tone::Dim, format!("attempt {attempt} in {delay_ms} ms"))
        }
        ConnectionEvent::ReconnectionFailed { error, attempts } => {
            ("✗", Tone::Bad, format!("reconnection failed after {attempts} attempts: {error}"))
        }
        ConnectionEvent::Disconnecting => ("…", Tone::Dim, "disconnecting".to_owned()),
        ConnectionEvent::Disconnected { error: None } => ("○", Tone::Dim, "disconnected".to_owned()),
        ConnectionEvent::Disconnected { error: Some(e) } => ("✗", Tone::Bad, format!("disconnected: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paint_leaves_text_alone() {
        let p = Paint { on: false };
        assert_eq!(p.paint(Tone::Good, "ok"), "ok");
        let p = Paint { on: true };
        assert_eq!(p.paint(Tone::Bad, "no"), "\x1b[31mno\x1b[0m");
    }

    #[test]
    fn clock_is_the_time_of_day() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(45_296_789);
        assert_eq!(clock(t), "12:34:56.789");
        assert_eq!(rfc3339(t), "1970-01-01T12:34:56.789Z");
    }

    #[test]
    fn every_event_reads_as_a_sentence() {
        let e = ConnectionEvent::Connected {
            method: Method::Webrtc,
            candidate_pair: Some("host/host".into()),
            rtt_ms: Some(1.234),
            reconnected: true,
        };
        assert_eq!(describe(&e).2, "reconnected over WebRTC, candidate pair host/host, rtt 1.23 ms");
        let e = ConnectionEvent::ReconnectionFailed { error: "refused".into(), attempts: 3 };
        assert_eq!(describe(&e).1, Tone::Bad);
    }
}
