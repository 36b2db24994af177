//! The command line, defined once: used by the binary and by the
//! packaging tools that generate man pages and shell completions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::InternalMedia;

#[derive(Parser, Debug)]
#[command(
    name = "keyline-gatewayd",
    version,
    about = "Keyline office phone gateway"
)]
pub struct Cli {
    /// State directory (default: see --help; control commands find the packaged
    /// service's /var/lib/keyline/gatewayd).
    ///
    /// Without --state: $STATE_DIRECTORY when set (systemd), else
    /// $XDG_STATE_HOME/keyline/gatewayd or ~/.local/state/keyline/gatewayd.
    /// The control commands (status, agents, approve, calls, speed-dial, …)
    /// use the packaged service's /var/lib/keyline/gatewayd instead when that
    /// exists and the per-user directory does not; the daemon itself never
    /// falls back.
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the gateway (the default when no command is given).
    Run(RunArgs),
    /// Show the gateway's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List stations: approved, waiting for approval, and seen on the LAN.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// List calls in progress.
    Calls {
        #[arg(long)]
        json: bool,
    },
    /// Show call records, oldest first.
    Cdr {
        #[arg(long)]
        json: bool,
        /// How many of the latest records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only calls with this number or extension on either end.
        #[arg(long)]
        number: Option<String>,
        /// Only calls with this outcome (answered, busy, no-answer, ...).
        #[arg(long)]
        outcome: Option<String>,
    },
    /// Approve a waiting station by the pairing code it shows.
    Approve {
        code: String,
        /// Extension to give it (default: the next free one).
        #[arg(long)]
        ext: Option<String>,
        /// A name for the station.
        #[arg(long)]
        name: Option<String>,
    },
    /// Refuse a waiting station by the pairing code it shows.
    Deny { code: String },
    /// Take a station's extension away (it must be approved again).
    Revoke { ext: String },
    /// Give a station another extension or name.
    Renumber {
        ext: String,
        /// The new extension.
        #[arg(long = "to", value_name = "EXT")]
        new_ext: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// End a call in progress (by its id in `calls`).
    Hangup { call: u64 },
    /// Print what happens on the gateway as it happens (stations, enrolments,
    /// calls, the uplink) until interrupted.
    Events {
        /// One JSON object per line, as the control socket sends them.
        #[arg(long)]
        json: bool,
    },
    /// Manage short codes (*0-*9, **00-**99) that dial any number.
    SpeedDial {
        #[command(subcommand)]
        action: SpeedDialCmd,
    },
    /// Ring groups: reception (who rings for calls to the office number,
    /// `set`, `show`, `clear`) and groups with an extension of their own
    /// (Sales, Support: `add`, `edit`, `remove`, `list`), all at once or in
    /// turn.
    RingGroup {
        #[command(subcommand)]
        action: RingGroupCmd,
    },
    /// The extensions stations and ring groups may have (set here, it wins
    /// over the configuration file's `extension_range`).
    ExtensionRange {
        #[command(subcommand)]
        action: ExtensionRangeCmd,
    },
    /// The admin site (HTTPS, `[admin]` in the configuration).
    Admin {
        #[command(subcommand)]
        action: AdminCmd,
    },
    /// Validate a configuration file and exit.
    CheckConfig { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Set the admin password (argon2id). It is read from standard input
    /// (one line) when that is not a terminal, else asked for twice.
    Passwd,
}

/// How a ring group's members ring: what `ring-group set`, `add` and
/// `edit` share.
#[derive(Args, Debug)]
pub struct Ringing {
    /// Ring the members one at a time, in the order given (a hunt group);
    /// busy, offline and do-not-disturb members are skipped.
    #[arg(long)]
    pub hunt: bool,
    /// With --hunt: seconds each member rings.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub step: u64,
    /// Member extensions, in order.
    #[arg(required = true)]
    pub members: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum RingGroupCmd {
    /// Ring these extensions for the office number (replaces `reception`).
    Set {
        #[command(flatten)]
        ringing: Ringing,
        /// Whose mailbox takes unanswered calls to the office number
        /// (default: the config file's `office_mailbox`, else the first
        /// member).
        #[arg(long, value_name = "EXT")]
        mailbox: Option<String>,
    },
    /// Show who rings for the office number.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Forget the ring group: the config file's `reception` applies.
    Clear,
    /// Add a ring group with an extension of its own, dialled from any
    /// station like a station's extension (and from outside as
    /// OFFICE/EXT). The extension must be in the extension range and no
    /// station's or other group's.
    Add {
        /// The group's extension.
        ext: String,
        /// What the group is called (Sales, Support).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        ringing: Ringing,
        /// Whose mailbox takes the calls nobody answers (default: none, the
        /// caller hears the group is unavailable).
        #[arg(long, value_name = "EXT")]
        mailbox: Option<String>,
    },
    /// Change a ring group added with `add` (its members, how they ring,
    /// its mailbox and, with --name, its name).
    Edit {
        /// The group's extension.
        ext: String,
        /// A new name (default: it keeps its name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        ringing: Ringing,
        /// Whose mailbox takes the calls nobody answers (default: none).
        #[arg(long, value_name = "EXT")]
        mailbox: Option<String>,
    },
    /// Remove a ring group added with `add`.
    Remove {
        /// The group's extension.
        ext: String,
    },
    /// List the ring groups added with `add`.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExtensionRangeCmd {
    /// Set the range (wins over the configuration file's). Refused, with
    /// nothing changed, while an enrolled station or a ring group would be
    /// outside it.
    Set {
        /// The lowest extension (at least 10).
        lo: u32,
        /// The highest extension (at most 999999).
        hi: u32,
    },
    /// Show the range in force and where it comes from.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Forget the range set here: the configuration file's applies again
    /// (refused as `set` is, if it would leave anyone outside).
    Clear,
}

#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP address to listen on (default 0.0.0.0:7470).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// How media of internal calls travels.
    #[arg(long, value_enum)]
    pub internal_media: Option<InternalMedia>,
    /// Seconds an unanswered call rings.
    #[arg(long, value_name = "SECS")]
    pub ring_timeout: Option<u64>,
    /// Do not advertise or browse with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Do not send unanswered, busy or unreachable calls to voicemail.
    #[arg(long)]
    pub no_voicemail: bool,
}

#[derive(Subcommand, Debug)]
pub enum SpeedDialCmd {
    /// Map a short code to a number.
    Set { code: String, number: String },
    /// List the short codes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a short code.
    Rm { code: String },
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
