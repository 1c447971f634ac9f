//! Positional arguments of an action, parsed one at a time with errors that
//! name the action, the argument and the expected form.

use super::Failure;

/// The arguments after an action name.
pub(super) struct Params<'a> {
    action: &'a str,
    usage: &'a str,
    args: std::slice::Iter<'a, String>,
}

impl<'a> Params<'a> {
    /// `usage` lists the argument names (e.g. `RPM REVS`) for error messages.
    pub(super) fn new(action: &'a str, usage: &'a str, args: &'a [String]) -> Self {
        Self { action, usage, args: args.iter() }
    }

    fn bad(&self, what: &str, expected: &str, got: Option<&str>) -> Failure {
        let usage =
            if self.usage.is_empty() { self.action.to_owned() } else { format!("{} {}", self.action, self.usage) };
        match got {
            Some(got) => {
                Failure::invalid(format!("{}: {what} must be {expected}, got {got:?} (usage: {usage})", self.action))
            }
            None => Failure::invalid(format!("{}: missing {what} (usage: {usage})", self.action)),
        }
    }

    fn next(&mut self, what: &str, expected: &str) -> Result<&'a str, Failure> {
        match self.args.next() {
            Some(a) => Ok(a.as_str()),
            None => Err(self.bad(what, expected, None)),
        }
    }

    /// Whether arguments remain.
    pub(super) fn has_more(&self) -> bool {
        self.args.len() > 0
    }

    /// Any text.
    pub(super) fn string(&mut self, what: &str) -> Result<String, Failure> {
        self.next(what, "given").map(str::to_owned)
    }

    /// A finite number.
    pub(super) fn f64(&mut self, what: &str) -> Result<f64, Failure> {
        let s = self.next(what, "a number")?;
        parse_f64(s).ok_or_else(|| self.bad(what, "a number", Some(s)))
    }

    /// A whole number ≥ 0.
    pub(super) fn u32(&mut self, what: &str) -> Result<u32, Failure> {
        let s = self.next(what, "a whole number ≥ 0")?;
        s.trim().parse().map_err(|_| self.bad(what, "a whole number ≥ 0", Some(s)))
    }

    /// A whole number.
    pub(super) fn i64(&mut self, what: &str) -> Result<i64, Failure> {
        let s = self.next(what, "a whole number")?;
        s.trim().parse().map_err(|_| self.bad(what, "a whole number", Some(s)))
    }

    /// Comma-separated numbers, e.g. `10,20,30`.
    pub(super) fn csv(&mut self, what: &str) -> Result<Vec<f64>, Failure> {
        let expected = "comma-separated numbers (e.g. 10,20,30)";
        let s = self.next(what, expected)?;
        parse_csv(s).ok_or_else(|| self.bad(what, expected, Some(s)))
    }

    /// A JSON object.
    pub(super) fn json_object(&mut self, what: &str) -> Result<serde_json::Value, Failure> {
        let expected = "a JSON object (e.g. '{\"a\": 1}')";
        let s = self.next(what, expected)?;
        match serde_json::from_str::<serde_json::Value>(s) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(self.bad(what, expected, Some(s))),
        }
    }

    /// Fails if arguments are left over.
    pub(super) fn finish(&mut self) -> Result<(), Failure> {
        let extra: Vec<&str> = self.args.by_ref().map(String::as_str).collect();
        if extra.is_empty() {
            return Ok(());
        }
        let usage = if self.usage.is_empty() {
            format!("{} takes no arguments", self.action)
        } else {
            format!("usage: {} {}", self.action, self.usage)
        };
        Err(Failure::invalid(format!(
            "{}: unexpected argument{} {} ({usage})",
            self.action,
            if extra.len() == 1 { "" } else { "s" },
            extra.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" "),
        )))
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn parse_csv(s: &str) -> Option<Vec<f64>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(parse_f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_and_reports() {
        let a = args(&["1.5", "10,-20, 30", "7", "{\"a\":1}"]);
        let mut p = Params::new("x", "A B C D", &a);
        assert_eq!(p.f64("A").ok(), Some(1.5));
        assert_eq!(p.csv("B").ok(), Some(vec![10.0, -20.0, 30.0]));
        assert_eq!(p.u32("C").ok(), Some(7));
        assert!(p.json_object("D").is_ok());
        assert!(p.finish().is_ok());

        let a = args(&["abc"]);
        let mut p = Params::new("set-power", "POWER", &a);
        let e = p.f64("POWER").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("InvalidArgument: set-power: POWER must be a number"), "{e}");
        let e = p.f64("POWER").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("missing POWER"), "{e}");

        let a = args(&["1", "2"]);
        let mut p = Params::new("stop", "", &a);
        let e = p.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unexpected arguments \"1\" \"2\""), "{e}");
        assert!(parse_csv("1,,2").is_none());
        assert!(parse_f64("nan").is_none());
    }
}
