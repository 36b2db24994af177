//! `keyline-pkggen OUTDIR`: writes the man pages and shell completions of
//! Keyline's three programs, generated from their clap definitions (the same
//! `Cli` types the binaries parse), for the Debian packages:
//!
//! ```text
//! OUTDIR/man/man8/keyline-gatewayd.8  keyline-gatewayd-<sub>.8 …
//! OUTDIR/man/man8/keyline-directory.8 keyline-directory-<sub>.8 …
//! OUTDIR/man/man1/keyline-agent.1     keyline-agent-<sub>.1 …
//! OUTDIR/completions/bash/<prog>
//! OUTDIR/completions/zsh/_<prog>
//! OUTDIR/completions/fish/<prog>.fish
//! ```
//!
//! `OUTDIR/man` is a man hierarchy: `MANPATH=OUTDIR/man man keyline-agent`
//! reads a page before installation. Pages carry the date of `SOURCE_DATE_EPOCH` when it is set (the package
//! build sets it), so builds are reproducible.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// One program: its command, man section, and the hand-written sections
/// appended to its main page.
struct Program {
    cmd: Command,
    section: &'static str,
    extra: Vec<(&'static str, Vec<Entry>)>,
}

/// A paragraph in an extra man section: a tagged one (`.TP`) or plain.
enum Entry {
    Tagged(&'static str, &'static str),
    Plain(&'static str),
}

fn programs() -> Vec<Program> {
    use Entry::{Plain, Tagged};
    vec![
        Program {
            cmd: keyline_gatewayd::cli::Cli::command(),
            section: "8",
            extra: vec![
                (
                    "FILES",
                    vec![
                        Tagged(
                            "/etc/keyline/gatewayd.toml",
                            "Configuration (TOML). Fields: listen (UDP address, default \
                             0.0.0.0:7470), internal_media (direct or relay), ring_timeout_secs \
                             (1-600, default 30), extension_range ([low, high], default \
                             [201, 499]), mdns (true or false), name (advertised on the LAN). \
                             Unknown fields are errors. Under systemd it is found through \
                             $CONFIGURATION_DIRECTORY; otherwise pass run --config FILE.",
                        ),
                        Tagged(
                            "/var/lib/keyline/gatewayd",
                            "State under systemd: the database of stations and call records, \
                             the gateway's certificate, and the control socket the other \
                             commands talk to.",
                        ),
                        Tagged(
                            "/lib/systemd/system/keyline-gatewayd.service",
                            "The systemd unit; systemctl reload keyline-gatewayd validates the \
                             configuration before the gateway re-reads it.",
                        ),
                    ],
                ),
                ("ENVIRONMENT", common_environment()),
                (
                    "EXAMPLES",
                    vec![Plain(
                        "As root, against the gateway run by systemd: keyline-gatewayd --state \
                         /var/lib/keyline/gatewayd agents, then keyline-gatewayd --state \
                         /var/lib/keyline/gatewayd approve CODE.",
                    )],
                ),
                (
                    "SEE ALSO",
                    vec![Plain(
                        "keyline-agent(1), keyline-directory(8), systemctl(1), journalctl(1)",
                    )],
                ),
            ],
        },
        Program {
            cmd: keyline_directory::cli::Cli::command(),
            section: "8",
            extra: vec![
                (
                    "FILES",
                    vec![
                        Tagged(
                            "/etc/keyline/directory.toml",
                            "Configuration (TOML). Under systemd it is found through \
                             $CONFIGURATION_DIRECTORY; otherwise pass serve --config FILE. \
                             check-config FILE validates one and names the bad field.",
                        ),
                        Tagged(
                            "/var/lib/keyline/directory",
                            "State under systemd: accounts, numbers, bindings, forwarding rules, \
                             stored mail, the directory's certificate and its control socket.",
                        ),
                        Tagged(
                            "/lib/systemd/system/keyline-directory.service",
                            "The systemd unit; systemctl reload keyline-directory validates the \
                             configuration before the directory re-reads it.",
                        ),
                    ],
                ),
                ("ENVIRONMENT", common_environment()),
                (
                    "SEE ALSO",
                    vec![Plain(
                        "keyline-gatewayd(8), keyline-agent(1), systemctl(1), journalctl(1)",
                    )],
                ),
            ],
        },
        Program {
            cmd: keyline_agent::cli::Cli::command(),
            section: "1",
            extra: vec![
                (
                    "FILES",
                    vec![
                        Tagged(
                            "~/.local/state/keyline/agent",
                            "State of the agent run as a user service: its identity, the \
                             pinned gateway, and the control socket that status, dial, answer \
                             and hangup talk to.",
                        ),
                        Tagged(
                            "/usr/lib/systemd/user/keyline-agent.service",
                            "The user unit, started in each desktop session: systemctl --user \
                             status keyline-agent.",
                        ),
                        Tagged(
                            "/lib/systemd/system/keyline-agent-headless.service",
                            "A system unit for stations without a desktop session (silence \
                             in, nothing out), shipped disabled; its state is \
                             /var/lib/keyline/agent.",
                        ),
                    ],
                ),
                ("ENVIRONMENT", common_environment()),
                ("SEE ALSO", vec![Plain("keyline-gatewayd(8), systemctl(1)")]),
            ],
        },
    ]
}

fn common_environment() -> Vec<Entry> {
    use Entry::Tagged;
    vec![
        Tagged(
            "STATE_DIRECTORY",
            "The state directory when --state is not given (systemd sets it); then \
             $XDG_STATE_HOME/keyline/PROGRAM, then ~/.local/state/keyline/PROGRAM.",
        ),
        Tagged(
            "CONFIGURATION_DIRECTORY",
            "Where the daemon looks for its configuration file (systemd sets it).",
        ),
        Tagged(
            "KEYLINE_LOG",
            "Log filter, in tracing's env-filter syntax (default info).",
        ),
        Tagged(
            "NOTIFY_SOCKET",
            "Set by systemd for Type=notify: readiness, status, watchdog, reloading and \
             stopping are reported there.",
        ),
    ]
}

/// Escape text for a roff text line.
fn roff_text(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

fn extra_sections(extra: &[(&str, Vec<Entry>)]) -> String {
    let mut out = String::new();
    for (heading, entries) in extra {
        out.push_str(&format!(".SH \"{heading}\"\n"));
        for e in entries {
            match e {
                Entry::Tagged(tag, text) => {
                    out.push_str(".TP\n");
                    out.push_str(&format!("\\fB{}\\fR\n", roff_text(tag)));
                    out.push_str(&roff_text(text));
                    out.push('\n');
                }
                Entry::Plain(text) => {
                    out.push_str(".PP\n");
                    out.push_str(&roff_text(text));
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// `YYYY-MM-DD` of a Unix time (UTC), by the days-to-civil algorithm.
fn ymd(epoch: i64) -> String {
    let z = epoch.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn page_date() -> Result<String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => {
            let secs: i64 = v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH is not a number: {v:?}"))?;
            Ok(ymd(secs))
        }
        Err(_) => Ok(String::new()),
    }
}

fn write_page(
    cmd: &Command,
    section: &str,
    date: &str,
    extra: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .date(date)
        .source(format!("Keyline {version}"))
        .manual("Keyline");
    let path = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf)
        .with_context(|| format!("rendering {}", path.display()))?;
    buf.extend_from_slice(extra.as_bytes());
    fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, section, date, "", dir, written)?;
    }
    Ok(())
}

fn write_completions(cmd: &Command, root: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let name = cmd.get_name().to_string();
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let dir = root.join(sub);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(file);
        let mut f =
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut c = cmd.clone();
        clap_complete::generate(shell, &mut c, &name, &mut f);
        f.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(())
}

fn run(out: &Path) -> Result<Vec<PathBuf>> {
    let date = page_date()?;
    let comp_dir = out.join("completions");
    let mut written = Vec::new();
    for p in programs() {
        let man_dir = out.join("man").join(format!("man{}", p.section));
        fs::create_dir_all(&man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
        // As clap_mangen::generate_to does: no `help` pseudo-command, and
        // build() so that subcommands get their display names
        // (`keyline-gatewayd-run`) and full usage lines.
        let mut cmd = p.cmd.disable_help_subcommand(true);
        cmd.build();
        let extra = extra_sections(&p.extra);
        write_page(&cmd, p.section, &date, &extra, &man_dir, &mut written)?;
        write_completions(&cmd, &comp_dir, &mut written)?;
    }
    Ok(written)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        bail!("usage: keyline-pkggen OUTDIR  (writes OUTDIR/man and OUTDIR/completions)");
    };
    let written = run(Path::new(out))?;
    println!("keyline-pkggen: wrote {} files under {out}", written.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(ymd(0), "1970-01-01");
        assert_eq!(ymd(951_782_400), "2000-02-29");
        assert_eq!(ymd(1_735_689_599), "2024-12-31");
    }

    #[test]
    fn roff_escapes_leading_dots_and_hyphens() {
        assert_eq!(roff_text(".config -x"), "\\&.config \\-x");
        assert_eq!(roff_text("a\\b"), "a\\eb");
    }

    #[test]
    fn every_page_and_completion_is_written() {
        let dir = std::env::temp_dir().join(format!("keyline-pkggen-test-{}", std::process::id()));
        let written = run(&dir).expect("generate");
        for f in [
            "man/man8/keyline-gatewayd.8",
            "man/man8/keyline-gatewayd-check-config.8",
            "man/man8/keyline-directory.8",
            "man/man1/keyline-agent.1",
            "man/man1/keyline-agent-run.1",
            "completions/bash/keyline-agent",
            "completions/zsh/_keyline-gatewayd",
            "completions/fish/keyline-directory.fish",
        ] {
            assert!(written.contains(&dir.join(f)), "{f} missing: {written:?}");
        }
        let page = fs::read_to_string(dir.join("man/man8/keyline-gatewayd.8")).expect("read");
        assert!(page.contains(".SH \"FILES\""), "{page}");
        assert!(page.contains("gatewayd.toml"), "{page}");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
