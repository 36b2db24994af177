//! The command line, defined once: used by the binary and by the
//! packaging tools that generate man pages and shell completions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(name = "keyline-agent", version, about = "Keyline workstation agent")]
pub struct Cli {
    /// State directory (default: see --help; control commands find the packaged
    /// service's /var/lib/keyline/agent).
    ///
    /// Without --state: $STATE_DIRECTORY when set (systemd), else
    /// $XDG_STATE_HOME/keyline/agent or ~/.local/state/keyline/agent.
    /// The control commands (status, dial, answer, hangup, …)
    /// use the packaged service's /var/lib/keyline/agent instead when that
    /// exists and the per-user directory does not; the daemon itself never
    /// falls back.
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the station: find the gateway, enrol, take and place calls.
    Run {
        /// Gateway address (default: found by mDNS on the LAN).
        #[arg(long, value_name = "HOST:PORT")]
        gateway: Option<String>,
        /// Do not use mDNS (then --gateway is required).
        #[arg(long)]
        no_mdns: bool,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Run as a standalone internet terminal: log in to a directory,
    /// register this machine's number(s) there, and place and take calls
    /// through it (no office gateway, no mDNS). The other commands (status,
    /// dial, answer, hangup, record, hold, resume, message, messages) drive
    /// it as they drive an office station.
    Terminal {
        /// The settings file from the directory's set-up page
        /// (`keyline-terminal.toml`: directory, fingerprint, account,
        /// numbers, where the password is kept). Options given here win.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The directory's address; for a directory of several nodes, each
        /// node's, comma-separated (or a name with an address per node).
        /// Losing one, the terminal resumes its session on another.
        #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
        directory: Option<String>,
        /// The directory's certificate fingerprint (`keyline-directory
        /// status`). Without it the first directory reached is trusted and
        /// its fingerprint pinned in the state directory.
        #[arg(long, value_name = "FP")]
        directory_fp: Option<String>,
        /// The account to log in as.
        #[arg(long, value_name = "ID")]
        account: Option<String>,
        /// A file holding the account's password (its first line).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// A number of the account to register here; repeatable (default:
        /// all of the account's numbers).
        #[arg(long = "number", value_name = "NUMBER")]
        numbers: Vec<String>,
        /// Where delivered texts and voice mail are kept (default: the
        /// state directory's `mail`).
        #[arg(long, value_name = "DIR")]
        mail_dir: Option<PathBuf>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Show registration (or the pairing code) and the call in progress.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Call a number or extension.
    Dial {
        number: String,
        /// Look-up only (standalone terminal): ask the directory only where
        /// NUMBER is and connect straight to its endpoint, which rings itself.
        #[arg(long)]
        lookup: bool,
    },
    /// Answer the ringing call.
    Answer,
    /// End the call (or decline a ringing one).
    Hangup,
    /// Hand the other end of the call on to another number: blind with a
    /// TARGET (`##N` in a call), or attended: `--consult TARGET` holds the
    /// call and calls TARGET (`*2N` in a call), then `--complete` joins them
    /// or `--cancel` comes back.
    Transfer {
        #[arg(required_unless_present_any = ["consult", "complete", "cancel"])]
        target: Option<String>,
        #[arg(long, value_name = "TARGET", conflicts_with_all = ["target", "complete", "cancel"])]
        consult: Option<String>,
        #[arg(long, conflicts_with_all = ["target", "cancel"])]
        complete: bool,
        #[arg(long, conflicts_with = "target")]
        cancel: bool,
    },
    /// Put the call on hold (the other end hears music).
    Hold,
    /// Take the call off hold.
    Resume,
    /// Record the call in progress (`on`) or stop (`off`).
    Record {
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Turn the camera off in the call in progress (`off`: the other end
    /// sees a black card and is told) or on again (`on`).
    Video {
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Your voicemail on the gateway (`*97` plays the new ones).
    Voicemail {
        #[command(subcommand)]
        action: VoicemailCmd,
    },
    /// Send a text message to an extension.
    Message {
        number: String,
        /// The text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// This station's metrics in Prometheus's text format: calls ended,
    /// set-up times, talk time, voice and video counters.
    Metrics,
    /// The office's contacts: the other stations and the short codes kept
    /// on the gateway.
    Contacts {
        #[arg(long)]
        json: bool,
    },
    /// Show (and mark read) the text messages received.
    Messages {
        #[arg(long)]
        json: bool,
    },
    /// Server-side forwarding of the terminal's numbers on the directory
    /// (standalone terminal only): always, when busy, when not answered,
    /// when offline, several at once, each on or off.
    Forward {
        #[command(subcommand)]
        action: ForwardCmd,
    },
    /// Change the account's password on the directory (standalone
    /// terminal only). The old and the new password are asked for without
    /// echo on a terminal, or read from standard input, one per line. The
    /// account's other sessions end; this terminal keeps its own and
    /// writes the new password to its password file.
    Passwd,
    /// The account on the directory (standalone terminal only): its
    /// numbers, the one callees see first, and its devices logged in now
    /// (address, program, registered numbers; this one marked).
    Account {
        #[arg(long)]
        json: bool,
    },
    /// The sound devices: the sound cards' inputs and outputs and what is
    /// in use (`list`), or the microphone, speaker, ringtone device and
    /// ringtone to use (`set`): from now on, a call in progress too, and
    /// at the next start (kept in the state directory's `audio.json`, as
    /// the phone window's Settings keep them). `--audio-in`/`--audio-out`
    /// and `--ringtone` on the daemon's command line come first at a start.
    Audio {
        #[command(subcommand)]
        action: AudioCmd,
    },
    /// Print what happens, as it happens: calls (ringing, answered, held,
    /// ended), the link, messages and voicemail waiting, until interrupted.
    Events {
        /// One JSON object per line (the control API's events).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ForwardCmd {
    /// Forward calls to the numbers given, one for each condition named;
    /// rules of the other conditions stay as they are. `--always` comes
    /// before all the others while it is on.
    #[command(group(clap::ArgGroup::new("rules").required(true).multiple(true)))]
    Set {
        /// Every call goes to TARGET.
        #[arg(long, value_name = "TARGET", group = "rules")]
        always: Option<String>,
        /// Calls go to TARGET while this terminal is busy (or set to
        /// do-not-disturb).
        #[arg(long, value_name = "TARGET", group = "rules")]
        busy: Option<String>,
        /// Calls not answered within the ring timeout go to TARGET.
        #[arg(long, value_name = "TARGET", group = "rules")]
        no_answer: Option<String>,
        /// Calls go to TARGET while no terminal has the number registered.
        #[arg(long, value_name = "TARGET", group = "rules")]
        offline: Option<String>,
        /// Which of the account's numbers (default: the first registered).
        #[arg(long, value_name = "NUMBER")]
        number: Option<String>,
    },
    /// Turn rules off (they keep their targets): the conditions named, or
    /// every rule of the number.
    Off {
        #[arg(value_parser = ["always", "busy", "no-answer", "offline"])]
        conditions: Vec<String>,
        /// Which of the account's numbers (default: the first registered).
        #[arg(long, value_name = "NUMBER")]
        number: Option<String>,
    },
    /// Show every rule of every number of the account, on and off.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AudioCmd {
    /// The sound cards' inputs and outputs, each with the SPEC that picks
    /// it, and the choice in use.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Choose what is given; the rest stays. Each one is opened before
    /// any is changed: if one cannot be (no such device, a ringtone that
    /// is not a 48 kHz WAV file), nothing changes.
    #[command(group(clap::ArgGroup::new("choice").required(true).multiple(true)))]
    Set {
        /// The microphone: `device` (the sound card's default),
        /// `device:ID` (from `audio list`), `tone:HZ`, `silence` or a WAV
        /// file.
        #[arg(long, value_name = "SPEC", group = "choice")]
        mic: Option<String>,
        /// The speaker: `device`, `device:ID`, `null` or a WAV file to
        /// write.
        #[arg(long, value_name = "SPEC", group = "choice")]
        speaker: Option<String>,
        /// Where the ringtone plays: `speaker` (with the call's audio, the
        /// default), `device`, `device:ID`, `null` or a WAV file.
        #[arg(long, value_name = "SPEC", group = "choice")]
        ring_device: Option<String>,
        /// The ringtone: a 48 kHz WAV file, or `built-in`.
        #[arg(long, value_name = "FILE", group = "choice")]
        ringtone: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Specs that name no file (`device`, `device:ID`, `tone:HZ`, `silence`,
/// `null`).
fn names_no_file(spec: &str) -> bool {
    matches!(spec, "device" | "silence" | "null")
        || spec.starts_with("device:")
        || spec.starts_with("tone:")
}

/// A spec as the daemon must get it: a file relative to `cwd` (where the
/// command runs, not where the daemon does) made absolute.
fn spec_from(cwd: &std::path::Path, spec: &str) -> String {
    let spec = spec.trim();
    if names_no_file(spec) || spec.is_empty() {
        spec.to_string()
    } else {
        cwd.join(spec).display().to_string()
    }
}

/// The control socket's `audio-set` for `keyline-agent audio set`: the
/// microphone, speaker, ringtone device (`speaker`: back to the speaker)
/// and ringtone (`built-in`: back to the built-in ring), each only when
/// given, files made absolute against `cwd`.
pub fn audio_set_request(
    cwd: &std::path::Path,
    mic: Option<&str>,
    speaker: Option<&str>,
    ring_device: Option<&str>,
    ringtone: Option<&str>,
) -> serde_json::Value {
    let mut req = serde_json::json!({"cmd": "audio-set"});
    if let Some(m) = mic {
        req["in"] = spec_from(cwd, m).into();
    }
    if let Some(o) = speaker {
        req["out"] = spec_from(cwd, o).into();
    }
    if let Some(r) = ring_device {
        req["ring_out"] = match r.trim() {
            "speaker" => serde_json::Value::Null,
            r => spec_from(cwd, r).into(),
        };
    }
    if let Some(t) = ringtone {
        req["ringtone"] = match t.trim() {
            "built-in" | "builtin" => serde_json::Value::Null,
            t => cwd.join(t).display().to_string().into(),
        };
    }
    req
}

#[derive(Subcommand, Debug)]
pub enum VoicemailCmd {
    /// List the messages.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Play one message (or, without an id, every new one) on the output.
    Play { id: Option<u64> },
    /// Delete a message.
    Delete { id: u64 },
}

/// The options an office station (`run`) and an internet terminal
/// (`terminal`) share: sound, pictures, answering, naming, recording.
#[derive(clap::Args, Debug, Clone)]
pub struct EndpointArgs {
    /// What to send: `device`, `device:ID`, `tone:HZ`, `silence` or a
    /// WAV file (default: what was last chosen in the phone window,
    /// else `device`).
    #[arg(long, value_name = "SPEC")]
    pub audio_in: Option<String>,
    /// Where to play: `device`, `device:ID`, `null` or a WAV file to
    /// write (default: what was last chosen in the phone window, else
    /// `device`).
    #[arg(long, value_name = "SPEC")]
    pub audio_out: Option<String>,
    /// What video to send: `none` (no camera) or `pattern` (a moving
    /// test picture carrying its frame counter and send time).
    #[arg(long, default_value = "none", value_name = "SPEC")]
    pub video_in: String,
    /// Where received video goes: `none`, a `.y4m` file, or any other
    /// file for one CSV line per picture (its counter, send and decode
    /// times).
    #[arg(long, default_value = "none", value_name = "SPEC")]
    pub video_out: String,
    /// Answer incoming calls by itself after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub auto_answer: Option<u64>,
    /// A name shown to callees, and to the gateway's admin or in the
    /// directory's lists.
    #[arg(long)]
    pub name: Option<String>,
    /// Ringtone WAV (default: a built-in ring).
    #[arg(long, value_name = "FILE")]
    pub ringtone: Option<PathBuf>,
    /// Local UDP address (default: any address, a free port).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
    /// Record every call (both directions, Ogg Opus) into this directory.
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,
    /// WAV file the other end hears while this endpoint holds a call.
    #[arg(long, value_name = "FILE")]
    pub hold_music: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn audio_set_sends_only_what_is_given_with_files_made_absolute() {
        let cwd = Path::new("/home/a");
        assert_eq!(
            audio_set_request(cwd, None, None, Some("device:null"), None),
            json!({"cmd": "audio-set", "ring_out": "device:null"})
        );
        assert_eq!(
            audio_set_request(
                cwd,
                Some("tone:600"),
                Some("out.wav"),
                Some("speaker"),
                Some("ring.wav")
            ),
            json!({"cmd": "audio-set", "in": "tone:600", "out": "/home/a/out.wav",
                   "ring_out": null, "ringtone": "/home/a/ring.wav"})
        );
        assert_eq!(
            audio_set_request(cwd, Some("silence"), Some("null"), None, Some("built-in")),
            json!({"cmd": "audio-set", "in": "silence", "out": "null", "ringtone": null})
        );
        assert_eq!(
            audio_set_request(cwd, Some("device"), None, Some("/tmp/r.wav"), None),
            json!({"cmd": "audio-set", "in": "device", "ring_out": "/tmp/r.wav"})
        );
    }

    #[test]
    fn audio_set_needs_a_choice() {
        use clap::Parser;
        assert!(Cli::try_parse_from(["keyline-agent", "audio", "set"]).is_err());
        assert!(Cli::try_parse_from(["keyline-agent", "audio", "set", "--json"]).is_err());
        assert!(
            Cli::try_parse_from(["keyline-agent", "audio", "set", "--ring-device", "null"]).is_ok()
        );
    }
}
