//! Parsing the outer console: scenario begin/end markers written by the outer /init.

use std::collections::BTreeMap;

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The script exited 0.
    Passed,
    /// The script exited with this non-zero code.
    Failed(i32),
    /// The per-scenario timeout stopped it.
    TimedOut,
    /// No end marker: the outer machine died, hung or never got to it.
    NoResult,
}

/// What the console said about one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioLog {
    /// Its status.
    pub status: Status,
    /// Console lines between its begin and end markers.
    pub log: String,
}

/// Everything the markers of one outer boot said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsoleReport {
    /// `@@THINVM-OUTER-READY@@` seen (KVM loaded).
    pub ready: bool,
    /// `@@THINVM-OUTER-DONE@@` seen (all scenarios ran).
    pub done: bool,
    /// `@@THINVM-OUTER-ERROR ...@@` text.
    pub outer_error: Option<String>,
    /// `@@THINVM-EXIT rc=N@@` (interactive mode).
    pub exit_rc: Option<i32>,
    /// Scenarios that began, by name.
    pub scenarios: BTreeMap<String, ScenarioLog>,
}

/// Finds a marker in `line`: returns (text before it, marker body without the `@@`s).
fn split_marker(line: &str) -> Option<(&str, &str)> {
    let start = line.find("@@THINVM-")?;
    let body = line.get(start + 2..)?;
    let end = body.find("@@")?;
    Some((line.get(..start)?, body.get(..end)?))
}

/// Parses the console text of one outer boot.
pub fn parse_console(text: &str) -> ConsoleReport {
    let mut report = ConsoleReport::default();
    let mut current: Option<(String, String, bool)> = None; // name, log, timed out
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let Some((before, marker)) = split_marker(line) else {
            if let Some((_, log, _)) = current.as_mut() {
                log.push_str(line);
                log.push('\n');
            }
            continue;
        };
        if let Some((_, log, _)) = current.as_mut() {
            if !before.is_empty() {
                log.push_str(before);
                log.push('\n');
            }
        }
        let mut words = marker.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("THINVM-OUTER-READY"), ..) => report.ready = true,
            (Some("THINVM-OUTER-DONE"), ..) => report.done = true,
            (Some("THINVM-OUTER-ERROR"), ..) => {
                let msg = marker.trim_start_matches("THINVM-OUTER-ERROR").trim();
                report.outer_error = Some(msg.to_string());
            }
            (Some("THINVM-EXIT"), Some(rc), _) => {
                report.exit_rc = rc.strip_prefix("rc=").and_then(|v| v.parse().ok());
            }
            (Some("THINVM-BEGIN"), Some(name), _) => {
                if let Some((prev, log, _)) = current.take() {
                    let status = Status::NoResult;
                    report.scenarios.insert(prev, ScenarioLog { status, log });
                }
                current = Some((name.to_string(), String::new(), false));
            }
            (Some("THINVM-TIMEOUT"), Some(name), _) => {
                if let Some((cur, _, timed_out)) = current.as_mut() {
                    *timed_out |= cur == name;
                }
            }
            (Some("THINVM-END"), Some(name), Some(rc)) => {
                if let Some((cur, log, timed_out)) = current.take() {
                    if cur == name {
                        let rc = rc.strip_prefix("rc=").and_then(|v| v.parse::<i32>().ok());
                        let status = match (timed_out, rc) {
                            (true, _) => Status::TimedOut,
                            (false, Some(0)) => Status::Passed,
                            (false, Some(n)) => Status::Failed(n),
                            (false, None) => Status::NoResult,
                        };
                        report.scenarios.insert(cur, ScenarioLog { status, log });
                    } else {
                        current = Some((cur, log, timed_out));
                    }
                }
            }
            _ => {
                // Another marker (e.g. @@THINVM-BENCH@@ is not ours): keep it in the log.
                if let Some((_, log, _)) = current.as_mut() {
                    log.push_str(line.get(before.len()..).unwrap_or_default());
                    log.push('\n');
                }
            }
        }
    }
    if let Some((name, log, _)) = current {
        report.scenarios.insert(
            name,
            ScenarioLog {
                status: Status::NoResult,
                log,
            },
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "SeaBIOS\r\n[ 1.0] kernel noise\r\n@@THINVM-OUTER-READY@@\r\n\
        @@THINVM-BEGIN a@@\r\nUNAME=6.1\r\nNPROC=1\r\n@@THINVM-END a rc=0@@\r\n\
        @@THINVM-BEGIN b@@\r\nboom\r\n@@THINVM-END b rc=4@@\r\n\
        @@THINVM-BEGIN c@@\r\nslow\r\n@@THINVM-TIMEOUT c@@\r\n@@THINVM-END c rc=124@@\r\n\
        @@THINVM-BEGIN d@@\r\nguest text without newline@@THINVM-END d rc=0@@\r\n\
        @@THINVM-BEGIN e@@\r\nhalf\r\n";

    #[test]
    fn statuses_and_logs() {
        let r = parse_console(CONSOLE);
        assert!(r.ready && !r.done);
        let get = |n: &str| r.scenarios.get(n).unwrap();
        assert_eq!(get("a").status, Status::Passed);
        assert_eq!(get("a").log, "UNAME=6.1\nNPROC=1\n");
        assert_eq!(get("b").status, Status::Failed(4));
        assert_eq!(get("c").status, Status::TimedOut);
        assert_eq!(get("d").status, Status::Passed);
        assert_eq!(get("d").log, "guest text without newline\n");
        assert_eq!(get("e").status, Status::NoResult);
        assert_eq!(get("e").log, "half\n");
        assert_eq!(r.scenarios.len(), 5);
    }

    #[test]
    fn outer_markers() {
        let r = parse_console("@@THINVM-OUTER-ERROR no /dev/kvm@@\n");
        assert_eq!(r.outer_error.as_deref(), Some("no /dev/kvm"));
        assert!(!r.ready);
        let r = parse_console("x\n@@THINVM-EXIT rc=3@@\n@@THINVM-OUTER-DONE@@\n");
        assert_eq!(r.exit_rc, Some(3));
        assert!(r.done);
    }

    #[test]
    fn garbage_never_panics_and_mismatched_end_is_ignored() {
        let r =
            parse_console("@@THINVM-BEGIN x@@\n@@THINVM-END y rc=0@@\n@@THINVM-END x rc=zz@@\n");
        assert_eq!(r.scenarios.get("x").unwrap().status, Status::NoResult);
        for s in [
            "@@THINVM-",
            "@@THINVM-END",
            "@@@@",
            "\u{fffd}@@THINVM-BEGIN@@",
            "@@THINVM-EXIT rc=@@",
        ] {
            let _ = parse_console(s);
        }
    }

    #[test]
    fn begin_without_end_before_next_begin() {
        let r = parse_console("@@THINVM-BEGIN a@@\nx\n@@THINVM-BEGIN b@@\n@@THINVM-END b rc=1@@\n");
        assert_eq!(r.scenarios.get("a").unwrap().status, Status::NoResult);
        assert_eq!(r.scenarios.get("b").unwrap().status, Status::Failed(1));
    }
}
