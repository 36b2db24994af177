//! The command line, defined once: used by the binary and by the
//! packaging tools that generate man pages and shell completions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "keyline-directory",
    version,
    about = "Keyline internet directory: finds and rings numbers, never carries media"
)]
pub struct Cli {
    /// State directory (default: see --help; control commands find the packaged
    /// service's /var/lib/keyline/directory).
    ///
    /// Without --state: $STATE_DIRECTORY when set (systemd), else
    /// $XDG_STATE_HOME/keyline/directory or ~/.local/state/keyline/directory.
    /// The control commands (status, users, user add, forward set, …)
    /// use the packaged service's /var/lib/keyline/directory instead when that
    /// exists and the per-user directory does not; the daemon itself never
    /// falls back.
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Validate a configuration file, name the bad field if any, and exit.
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the directory (the default when no command is given).
    #[command(alias = "run")]
    Serve(ServeArgs),
    /// Show the directory's state: listeners, sessions, bindings, calls, relayed bytes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List accounts and their numbers.
    Users {
        #[arg(long)]
        json: bool,
    },
    /// Manage accounts (works whether or not the directory runs).
    #[command(subcommand)]
    User(UserCmd),
    /// List registered numbers: where each one rings now and until when.
    Bindings {
        #[arg(long)]
        json: bool,
    },
    /// List calls in progress.
    Calls {
        #[arg(long)]
        json: bool,
    },
    /// The cluster this node is one of (`[cluster] nats`).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Print what happens in the directory as it happens (numbers
    /// registered and unregistered, calls, mail, login lock-outs, disk)
    /// until interrupted.
    Events {
        /// One JSON object per line, as the control socket sends them.
        #[arg(long)]
        json: bool,
    },
    /// Server-side forwarding rules (claim 8).
    #[command(subcommand)]
    Forward(ForwardCmd),
    /// Stored voice mail and text messages waiting for delivery.
    #[command(subcommand)]
    Mail(MailCmd),
    /// Invite codes for the web site's sign-up (`[web] signup = "invite"`).
    #[command(subcommand)]
    Invite(InviteCmd),
    /// Validate a configuration file and exit (same as --check-config).
    CheckConfig { file: PathBuf },
    /// Copy a single-node directory's SQLite database into the PostgreSQL
    /// database the configuration names (`[store] postgres`), then check
    /// the copy and print what it holds. Stop the directory first.
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The SQLite database to copy (a directory's STATE/directory.sqlite).
    #[arg(long, value_name = "FILE")]
    pub from_sqlite: PathBuf,
    /// Configuration file naming the PostgreSQL database (default:
    /// $CONFIGURATION_DIRECTORY/directory.toml, else /etc/keyline/directory.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Delete whatever directory data the PostgreSQL database holds before
    /// copying (without it, a database that is not empty is refused).
    #[arg(long)]
    pub replace: bool,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum InviteCmd {
    /// Make new invite codes and print them (each works once; only a hash is stored).
    Create {
        /// How many codes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
    /// List invite codes (their hashes) and who used them.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account; the password is read from standard input (one line).
    Add {
        /// Login name of the account.
        id: String,
        /// A number the account owns (digits, letters, any script); repeatable.
        #[arg(long = "number", value_name = "NUMBER", required = true)]
        numbers: Vec<String>,
    },
    /// Set an account's password (read from standard input, one line); its sessions end.
    Passwd { id: String },
    /// Delete an account, its numbers, forwarding rules and stored mail.
    Rm { id: String },
    /// Let an account use the web site's operator pages (or no longer, with --off).
    Admin {
        id: String,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ForwardCmd {
    /// Forward calls for NUMBER to another number (one rule of each kind;
    /// a rule of another kind stays).
    Set {
        number: String,
        /// Where calls go.
        #[arg(long, value_name = "NUMBER")]
        to: String,
        /// When the rule applies.
        #[arg(long, value_enum, default_value_t = ForwardWhenArg::Always)]
        when: ForwardWhenArg,
    },
    /// Remove every forwarding rule of NUMBER.
    Rm { number: String },
    /// List forwarding rules.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MailCmd {
    /// List stored messages (metadata only).
    List {
        #[arg(long)]
        json: bool,
    },
}

/// When a server-side forwarding rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForwardWhenArg {
    /// Every call.
    Always,
    /// Only while the number is not registered (the callee's machine is off).
    Unregistered,
    /// When the callee declines as busy or is set to do-not-disturb.
    Busy,
    /// When the call rings unanswered until the ring timeout.
    NoAnswer,
}

/// How the two ends of an answered call reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// End to end only; fail when unreachable.
    Direct,
    /// End to end, and through the directory's relay when that fails.
    DirectThenRelay,
    /// Always through the directory's relay.
    Relay,
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML configuration file (default: $CONFIGURATION_DIRECTORY/directory.toml if present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP address to listen on (default 0.0.0.0:7480).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Direct-connect rule for answered calls.
    #[arg(long, value_enum)]
    pub direct_connect: Option<PolicyArg>,
    /// Seconds a registration lasts unless refreshed.
    #[arg(long, value_name = "SECS")]
    pub binding_ttl: Option<u32>,
    /// Seconds an unanswered call rings.
    #[arg(long, value_name = "SECS")]
    pub ring_timeout: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// The nodes with their sessions and bindings, NATS and PostgreSQL
    /// health, as this node sees them.
    Status {
        #[arg(long)]
        json: bool,
    },
}
