//! A throw-away PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary
//! folder, the server listening only on a Unix socket in that folder, run
//! as an unprivileged user (`nobody` when the tests run as root: initdb
//! refuses root), stopped and removed when the guard drops, panics
//! included.
//!
//! PostgreSQL missing is a failure, not a skip: `scripts/install-deps.sh
//! --test` installs the Debian `postgresql` package.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// The port only names the socket file; nothing listens on TCP.
const PORT: u16 = 5432;
const SUPERUSER: &str = "keyline";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The folder of the PostgreSQL programs: `KEYLINE_PG_BIN`, else the
/// newest /usr/lib/postgresql/*/bin with an initdb.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYLINE_PG_BIN") {
        let d = PathBuf::from(d);
        assert!(
            d.join("initdb").exists() && d.join("postgres").exists(),
            "KEYLINE_PG_BIN={} holds no initdb and postgres",
            d.display()
        );
        return d;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             run scripts/install-deps.sh --test, which installs the Debian postgresql package \
             (or set KEYLINE_PG_BIN to the folder of initdb and postgres)"
        ),
    }
}

/// A running cluster; dropping it stops the server and removes its files.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    /// The user the server runs as (None: the test's own).
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl PgCluster {
    /// Make and start a cluster.
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let user = if nix::unistd::geteuid().is_root() {
            let u = User::from_name("nobody")
                .ok()
                .flatten()
                .expect("the tests run as root and there is no user nobody to run PostgreSQL as");
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "keyline-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("making the cluster's folder");
        let mut cluster = PgCluster {
            dir,
            bin,
            user,
            server: None,
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .expect("giving the cluster's folder to nobody");
        }
        let started = Instant::now();
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg("--no-locale")
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "initdb in {} took {} ms",
            cluster.dir.display(),
            started.elapsed().as_millis()
        );
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(&self.dir)
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        let host: String = self
            .dir
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_string(),
                b if b.is_ascii_alphanumeric() || b"-_.".contains(&b) => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect();
        format!("postgresql://{SUPERUSER}@{host}:{PORT}/{db}")
    }

    /// Make an empty database.
    pub fn create_db(&self, name: &str) {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connecting to make a database");
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("CREATE DATABASE");
    }

    /// Start the server on the existing data and wait until it answers.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is running already");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("opening the server log");
        let err = log.try_clone().expect("log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &PORT.to_string()])
            .args(["-c", "listen_addresses="])
            // A test cluster: nothing survives a crash of the machine, but
            // a clean shutdown (all the tests do) writes everything.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"])
            .args(["-c", "max_prepared_transactions=4"])
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("starting postgres");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                self.server = None;
                panic!("postgres exited ({status}) at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not answer within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server (a fast shutdown: sessions are ended, everything
    /// committed is written) and wait until it is gone.
    pub fn stop_server(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
