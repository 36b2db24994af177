//! The appliance as an office installs it: the systemd units and the Debian
//! packages built by `packaging/build-debs.sh`.
//!
//! - every unit passes `systemd-analyze verify` with no output at all, and
//!   `systemd-analyze security` rates the gateway's and the directory's
//!   exposure 2.5 or less;
//! - lintian finds no error and no warning in any package;
//! - in a Debian root made by debootstrap (cached under
//!   `<target>/deb-root-cache/`, or `$KEYLINE_DEB_ROOT_CACHE`, and used
//!   through an overlay so the cache stays pristine): install, upgrade to a
//!   second build with a higher version, remove, purge — checking the files,
//!   the `keyline` user, the enabled units, a locally modified conffile kept
//!   across the upgrade, and that nothing is left after the purge. systemd
//!   does not run in that chroot and a policy-rc.d forbids starting
//!   anything, so no service starts there; the test checks no process is
//!   left inside the root;
//! - the same root booted with systemd as PID 1 (systemd-nspawn, private
//!   network): the sandboxed services reach READY, the headless agent pairs
//!   with the gateway, `systemctl reload` validates before it signals, the
//!   sandbox is in force, and each daemon stops with status 0.
//!
//! They need root (chroot, mount, nspawn) and the Debian archive through
//! apt's mirror for the first debootstrap; they package the binaries the
//! test run has built (`cargo build --workspace --bins`, as `make test`
//! does first), twice per test run. The Debian tools they
//! need (debhelper, dpkg-dev, lintian, debootstrap, systemd-container,
//! man-db) are installed when missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The cargo target directory this test was built in.
fn target_dir() -> PathBuf {
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target directory above the test binary")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// These tests install Debian packages, chroot and mount: as root only
/// (as CI runs). Elsewhere they say so and pass.
fn root_or_skip() -> bool {
    let root = is_root();
    if !root {
        eprintln!("packaging tests need root (apt-get, chroot, mount): skipped");
    }
    root
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a command; panic with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    text(&o)
}

/// Install Debian packages that are missing (idempotent; CI runs as root).
fn ensure_debs(pkgs: &[&str]) {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            let o = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(o, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("packaging tests: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]));
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing));
}

fn workspace_version() -> String {
    let toml = fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let mut in_pkg = false;
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_pkg = l == "[workspace.package]";
        } else if in_pkg && l.starts_with("version") {
            return l.split('"').nth(1).expect("quoted version").to_string();
        }
    }
    panic!("no version under [workspace.package]");
}

const PACKAGES: [&str; 4] = [
    "keyline-gateway",
    "keyline-agent",
    "keyline-directory",
    "keyline-phone",
];

/// The two builds of the packages every test here shares.
struct Builds {
    v1: String,
    v2: String,
    dir1: PathBuf,
    dir2: PathBuf,
}

impl Builds {
    fn debs(&self, dir: &Path, version: &str) -> Vec<PathBuf> {
        let arch = run(Command::new("dpkg").arg("--print-architecture"))
            .trim()
            .to_string();
        PACKAGES
            .iter()
            .map(|p| {
                let deb = dir.join(format!("{p}_{version}_{arch}.deb"));
                assert!(deb.exists(), "{} was not built", deb.display());
                deb
            })
            .collect()
    }
}

/// The cargo profile the packages are built from here: the binaries every
/// other end-to-end test runs. They are packaged, installed and sandboxed
/// exactly as release binaries are; building a release profile too would add
/// a second full build to every test run.
const PROFILE: &str = "dev";
/// Where cargo puts that profile's binaries.
const PROFILE_DIR: &str = "debug";

/// Build the packages twice — the workspace version, then a higher one — in
/// `<target>/debian-test/`, once per test process.
fn builds() -> &'static Builds {
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    BUILDS.get_or_init(|| {
        let base = target_dir().join("debian-test");
        let v1 = format!("{}-1", workspace_version());
        let v2 = format!("{v1}+test2");
        let dir1 = base.join("v1");
        let dir2 = base.join("v2");
        let script = repo().join("packaging/build-debs.sh");
        let build = |version: &str, out: &Path| {
            run(Command::new(&script)
                .env("KEYLINE_DEB_VERSION", version)
                .env("KEYLINE_DEB_OUT", out)
                .env("KEYLINE_DEB_PROFILE", PROFILE)
                .env("KEYLINE_DEB_NO_CARGO", "1")
                // dpkg-deb's own knobs: gzip -1 instead of xz -6 made a
                // build of these (debug-profile) binaries take 7 s instead
                // of 38. What is checked here (files, scripts, upgrades)
                // does not depend on how the archive members are
                // compressed; `make deb` keeps dpkg's default.
                .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
                .env("DPKG_DEB_COMPRESSOR_LEVEL", "1"));
        };
        let t = std::time::Instant::now();
        build(&v1, &dir1);
        // The same binaries, packaged again with a higher version.
        build(&v2, &dir2);
        eprintln!(
            "packaging tests: two builds of the packages in {:?}",
            t.elapsed()
        );
        Builds { v1, v2, dir1, dir2 }
    })
}

// ---------------------------------------------------------------------------
// systemd units

const UNITS: [(&str, bool); 5] = [
    ("keyline-gatewayd.service", false),
    ("keyline-directory.service", false),
    ("keyline-agent-headless.service", false),
    ("keyline-agent.service", true), // a user unit
    ("keyline-phone.service", true), // the window, with the graphical session
];

/// `systemd-analyze verify` on every unit, with the ExecStart= binaries at
/// their installed path replaced by the ones just built (systemd checks they
/// exist, and `--root` does not work), and the generated man pages on
/// MANPATH (it checks Documentation=man: pages too). Nothing may be printed.
#[test]
fn units_verify_clean() {
    if !root_or_skip() {
        return;
    }
    ensure_debs(&["systemd", "man-db"]);
    builds(); // the binaries and man pages the units name
    let release = target_dir().join(PROFILE_DIR);
    let man = target_dir().join("keyline-pkggen/man");
    let dir = target_dir().join("unit-verify");
    let _ = fs::remove_dir_all(&dir);
    let runtime = dir.join("xdg-runtime");
    fs::create_dir_all(&runtime).unwrap();
    run(Command::new("chmod").arg("700").arg(&runtime));
    // The window's man page is written by hand (packaging/desktop/).
    let hand_man = dir.join("man");
    fs::create_dir_all(hand_man.join("man1")).unwrap();
    fs::copy(
        repo().join("packaging/desktop/keyline-phone.1"),
        hand_man.join("man1/keyline-phone.1"),
    )
    .unwrap();
    let manpath = format!("{}:{}", man.display(), hand_man.display());
    for (unit, user) in UNITS {
        let src = fs::read_to_string(repo().join("systemd").join(unit)).expect("unit file");
        assert!(
            src.lines()
                .any(|l| l.starts_with("ExecStart=/usr/bin/keyline-")),
            "{unit}: ExecStart is not /usr/bin/keyline-*"
        );
        let mut rewritten = src.clone();
        for bin in [
            "keyline-gatewayd",
            "keyline-directory",
            "keyline-agent",
            "keyline-phone",
        ] {
            let built = release.join(bin);
            assert!(built.exists(), "{} is missing", built.display());
            rewritten = rewritten.replace(
                &format!("/usr/bin/{bin} "),
                &format!("{} ", built.display()),
            );
            rewritten = rewritten.replace(
                &format!("/usr/bin/{bin}\n"),
                &format!("{}\n", built.display()),
            );
        }
        assert!(
            !rewritten.contains("/usr/bin/keyline-"),
            "{unit}: a binary path was not rewritten"
        );
        let path = dir.join(unit);
        fs::write(&path, rewritten).unwrap();
        let mut cmd = Command::new("systemd-analyze");
        if user {
            // A user manager needs a runtime directory, even to verify.
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let o = cmd
            .arg("verify")
            .arg(&path)
            .env("MANPATH", &manpath)
            .stdin(Stdio::null())
            .output()
            .expect("systemd-analyze");
        let out = text(&o);
        assert!(
            o.status.success() && out.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\n{out}",
            o.status
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// `systemd-analyze security` on the unit files as shipped.
#[test]
fn gateway_and_directory_exposure_at_most_2_5() {
    if !root_or_skip() {
        return;
    }
    ensure_debs(&["systemd"]);
    let mut report = Vec::new();
    for unit in [
        "keyline-gatewayd.service",
        "keyline-directory.service",
        "keyline-agent-headless.service",
    ] {
        let path = repo().join("systemd").join(unit);
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path));
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level for"))
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{out}"));
        let figure: f64 = line
            .split(':')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse {line:?}"));
        report.push(format!("{unit}: {figure}"));
        assert!(figure <= 2.5, "{unit}: exposure {figure} > 2.5\n{out}");
    }
    eprintln!("exposure: {}", report.join(", "));
}

// ---------------------------------------------------------------------------
// lintian

#[test]
fn lintian_clean() {
    if !root_or_skip() {
        return;
    }
    ensure_debs(&["lintian"]);
    // The second build holds the same files under a higher version; the
    // first one stands for both.
    let b = builds();
    let debs = b.debs(&b.dir1, &b.v1);
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .args(&debs)
        .stdin(Stdio::null())
        .output()
        .expect("lintian");
    let out = text(&o);
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        o.status.success() && bad.is_empty(),
        "lintian on {}: {}\n{out}",
        b.v1,
        o.status
    );
    eprintln!("lintian {}: clean ({} packages)", b.v1, debs.len());
}

// ---------------------------------------------------------------------------
// install → upgrade → remove → purge in a debootstrap root

/// The distribution the host runs, which the packages are built for.
fn host_codename() -> String {
    let os = fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .expect("VERSION_CODENAME in /etc/os-release")
}

/// The Debian mirror apt is configured with for `suite` (deb822 .sources
/// files first, then one-line sources.list files).
fn apt_mirror(suite: &str) -> String {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let Ok(body) = fs::read_to_string(f) else {
            continue;
        };
        for stanza in body.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            };
            let enabled = !field("Enabled:").eq_ignore_ascii_case("no");
            if enabled
                && field("Types:").split_whitespace().any(|t| t == "deb")
                && field("Suites:").split_whitespace().any(|s| s == suite)
            {
                if let Some(uri) = field("URIs:").split_whitespace().next() {
                    return uri.to_string();
                }
            }
        }
    }
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "list"))
    {
        let Ok(body) = fs::read_to_string(f) else {
            continue;
        };
        for line in body.lines() {
            let mut w: Vec<&str> = line.split_whitespace().collect();
            if w.first() != Some(&"deb") {
                continue;
            }
            w.remove(0);
            if w.first().is_some_and(|o| o.starts_with('[')) {
                while let Some(o) = w.first() {
                    let last = o.ends_with(']');
                    w.remove(0);
                    if last {
                        break;
                    }
                }
            }
            if w.len() >= 2 && w[1] == suite {
                return w[0].to_string();
            }
        }
    }
    panic!("no apt source for {suite} in /etc/apt: cannot debootstrap");
}

/// Runtime dependencies of the packages (first alternative of each), so
/// the cached root already has them and installing needs no download.
fn runtime_deps(debs: &[PathBuf]) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for deb in debs {
        let d = run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg("Depends"));
        for clause in d.split(',') {
            let first = clause.split('|').next().unwrap_or("").trim();
            let name = first.split([' ', '(', ':']).next().unwrap_or("").trim();
            // Our own packages (keyline-phone needs keyline-agent) come
            // from the .debs, not from the mirror.
            if !name.is_empty() && !PACKAGES.contains(&name) {
                deps.insert(name.to_string());
            }
        }
    }
    deps
}

/// A minimal Debian root of the host's release, made by debootstrap once
/// and kept in `<target>/deb-root-cache/<codename>-<arch>/`.
fn cached_root(debs: &[PathBuf]) -> PathBuf {
    // Tests run in parallel: one debootstrap per process.
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| make_cached_root(debs)).clone()
}

fn make_cached_root(debs: &[PathBuf]) -> PathBuf {
    let codename = host_codename();
    let arch = run(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_string();
    // KEYLINE_DEB_ROOT_CACHE puts the cache outside the target directory,
    // e.g. somewhere a CI machine keeps between fresh clones.
    let cache = std::env::var_os("KEYLINE_DEB_ROOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("deb-root-cache"));
    // systemd, systemd-sysv and dbus: the root can also be booted with
    // systemd-nspawn (services_run_sandboxed_under_systemd).
    let root = cache.join(format!("{codename}-{arch}-systemd"));
    if root.join(".keyline-ok").exists() {
        return root;
    }
    ensure_debs(&["debootstrap"]);
    let mirror = apt_mirror(&codename);
    let tmp = cache.join(format!("{codename}-{arch}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&cache).unwrap();
    let mut include: Vec<String> = runtime_deps(debs).into_iter().collect();
    include.extend(["systemd", "systemd-sysv", "dbus"].map(String::from));
    let t = std::time::Instant::now();
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", include.join(",")),
        ])
        .arg(&codename)
        .arg(&tmp)
        .arg(&mirror));
    // debootstrap leaves its package lists: apt in the root can resolve a
    // dependency added later without a new cache.
    fs::write(
        tmp.join(".keyline-ok"),
        format!("{codename} {arch} {mirror}\n"),
    )
    .unwrap();
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).unwrap();
    eprintln!(
        "packaging tests: debootstrap {codename} from {mirror} in {:?}",
        t.elapsed()
    );
    root
}

/// A throw-away root: an overlay on the cached one (a copy where overlayfs
/// is not available). Dropping it checks no process runs inside, unmounts
/// and deletes it.
struct TestRoot {
    base: PathBuf,
    root: PathBuf,
    mounted: bool,
}

impl TestRoot {
    fn new(cached: &Path) -> TestRoot {
        // Unique per root: tests in this process run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = target_dir().join(format!("deb-root-run-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        for d in ["upper", "work", "root"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            cached.display(),
            base.join("upper").display(),
            base.join("work").display()
        );
        let mounted = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("packaging tests: no overlayfs, copying the cached root");
            run(Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", cached.display()))
                .arg(&root));
        }
        let t = TestRoot {
            base,
            root,
            mounted,
        };
        // Nothing may start inside: deb-systemd-invoke and invoke-rc.d ask
        // policy-rc.d, and systemd is not running in the root anyway.
        t.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n");
        t.sh("chmod 755 /usr/sbin/policy-rc.d");
        t
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn write(&self, p: &str, body: &str) {
        fs::write(self.path(p), body).unwrap_or_else(|e| panic!("writing {p}: {e}"));
    }

    fn exists(&self, p: &str) -> bool {
        fs::symlink_metadata(self.path(p)).is_ok()
    }

    /// Run a shell command inside the root; its output, or a panic.
    fn sh(&self, script: &str) -> String {
        run(&mut self.cmd(script))
    }

    /// Run a shell command inside the root; (success, output).
    fn try_sh(&self, script: &str) -> (bool, String) {
        let o = self
            .cmd(script)
            .stdin(Stdio::null())
            .output()
            .expect("chroot");
        (o.status.success(), text(&o))
    }

    fn cmd(&self, script: &str) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.root)
            .args(["/bin/sh", "-ec", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", "/root");
        c
    }

    /// "installed 0.1.0-1", "config-files 0.1.0-1", or "" when dpkg does
    /// not know the package (any more).
    fn status(&self, pkg: &str) -> String {
        let (ok, out) = self.try_sh(&format!(
            "dpkg-query -W -f='${{db:Status-Status}} ${{Version}}' {pkg}"
        ));
        if ok {
            out.trim().to_string()
        } else {
            String::new()
        }
    }

    /// Processes whose root directory is inside this root.
    fn processes_inside(&self) -> Vec<String> {
        let me = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut found = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if let Ok(r) = fs::read_link(e.path().join("root")) {
                if r.starts_with(&me) {
                    let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                    found.push(format!("{pid} {}", comm.trim()));
                }
            }
        }
        found
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        for p in self.processes_inside() {
            eprintln!("packaging tests: killing leftover process {p}");
            if let Some(pid) = p.split_whitespace().next() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.root)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.root).status();
            }
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Install every given .deb inside the root with apt (which resolves any
/// dependency the cached root lacks).
fn apt_install(t: &TestRoot, debs: &[PathBuf], stage: &str) {
    let dir = format!("/tmp/{stage}");
    fs::create_dir_all(t.path(&dir)).unwrap();
    let mut args = Vec::new();
    for d in debs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        fs::copy(d, t.path(&format!("{dir}/{name}"))).unwrap();
        args.push(format!("{dir}/{name}"));
    }
    t.sh(&format!(
        "apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
         -o Dpkg::Options::=--force-confold {}",
        args.join(" ")
    ));
}

#[test]
fn install_upgrade_remove_purge_in_a_debootstrap_root() {
    if !root_or_skip() {
        return;
    }
    let b = builds();
    let debs1 = b.debs(&b.dir1, &b.v1);
    let debs2 = b.debs(&b.dir2, &b.v2);
    let cached = cached_root(&debs1);
    let started = std::time::Instant::now();
    let t = TestRoot::new(&cached);

    // --- install -----------------------------------------------------------
    apt_install(&t, &debs1, "v1");
    for p in PACKAGES {
        assert_eq!(
            t.status(p),
            format!("installed {}", b.v1),
            "{p} after install"
        );
    }
    let unit_dir = if t.exists("/usr/lib/systemd/system/keyline-gatewayd.service") {
        "/usr/lib/systemd/system"
    } else {
        "/lib/systemd/system"
    };
    let expect_files = [
        "/usr/bin/keyline-gatewayd".to_string(),
        "/usr/bin/keyline-directory".into(),
        "/usr/bin/keyline-agent".into(),
        format!("{unit_dir}/keyline-gatewayd.service"),
        format!("{unit_dir}/keyline-directory.service"),
        format!("{unit_dir}/keyline-agent-headless.service"),
        "/usr/lib/systemd/user/keyline-agent.service".into(),
        "/etc/keyline/gatewayd.toml".into(),
        "/etc/keyline/directory.toml".into(),
        "/usr/share/man/man8/keyline-gatewayd.8.gz".into(),
        "/usr/share/man/man8/keyline-gatewayd-check-config.8.gz".into(),
        "/usr/share/man/man8/keyline-directory.8.gz".into(),
        "/usr/share/man/man1/keyline-agent.1.gz".into(),
        "/usr/share/bash-completion/completions/keyline-gatewayd".into(),
        "/usr/share/zsh/vendor-completions/_keyline-agent".into(),
        "/usr/share/fish/vendor_completions.d/keyline-directory.fish".into(),
        "/usr/bin/keyline-phone".into(),
        "/usr/lib/systemd/user/keyline-phone.service".into(),
        "/usr/share/applications/keyline-phone.desktop".into(),
        "/usr/share/icons/hicolor/scalable/apps/keyline-phone.svg".into(),
        "/usr/share/man/man1/keyline-phone.1.gz".into(),
    ];
    for f in &expect_files {
        assert!(t.exists(f), "{f} is not installed");
    }
    for p in PACKAGES {
        for f in ["copyright", "changelog.Debian.gz"] {
            let f = format!("/usr/share/doc/{p}/{f}");
            assert!(t.exists(&f), "{f} is not installed");
        }
    }
    // The programs run in the root: their libraries came with the Depends.
    for bin in [
        "keyline-gatewayd",
        "keyline-directory",
        "keyline-agent",
        "keyline-phone",
    ] {
        let v = t.sh(&format!("{bin} --version"));
        assert!(v.contains(&workspace_version()), "{bin} --version: {v}");
    }
    // The shipped default configurations are valid.
    t.sh("keyline-gatewayd check-config /etc/keyline/gatewayd.toml");
    t.sh("keyline-directory check-config /etc/keyline/directory.toml");
    // Conffiles.
    let conf = t.sh("dpkg-query -W -f='${Conffiles}' keyline-gateway keyline-directory");
    assert!(
        conf.contains("/etc/keyline/gatewayd.toml"),
        "conffiles: {conf}"
    );
    assert!(
        conf.contains("/etc/keyline/directory.toml"),
        "conffiles: {conf}"
    );
    // The system user: no login, no home.
    let pw = t.sh("getent passwd keyline").trim().to_string();
    let f: Vec<&str> = pw.split(':').collect();
    assert_eq!(f.len(), 7, "{pw}");
    let uid: u32 = f[2].parse().unwrap();
    assert!(uid < 1000, "keyline is not a system user: {pw}");
    assert_eq!(f[5], "/nonexistent", "{pw}");
    assert!(f[6].ends_with("nologin"), "{pw}");
    t.sh("getent group keyline");
    // Enabled through deb-systemd-helper; the headless agent is not.
    for link in [
        "/etc/systemd/system/multi-user.target.wants/keyline-gatewayd.service",
        "/etc/systemd/system/multi-user.target.wants/keyline-directory.service",
        "/etc/systemd/user/default.target.wants/keyline-agent.service",
        "/etc/systemd/user/graphical-session.target.wants/keyline-phone.service",
    ] {
        assert!(t.exists(link), "{link} missing: the unit is not enabled");
    }
    assert!(
        !t.exists("/etc/systemd/system/multi-user.target.wants/keyline-agent-headless.service"),
        "the headless agent must ship disabled"
    );
    assert!(
        t.processes_inside().is_empty(),
        "{:?}",
        t.processes_inside()
    );
    // What the services would have written, as the keyline user.
    for s in ["gatewayd", "directory", "agent"] {
        t.sh(&format!(
            "mkdir -p /var/lib/keyline/{s} && echo data > /var/lib/keyline/{s}/state.db && \
             chown -R keyline:keyline /var/lib/keyline/{s} && chmod 700 /var/lib/keyline/{s}"
        ));
    }
    // A local change to a conffile.
    t.sh("printf '\\n# local change\\nring_timeout_secs = 45\\n' >> /etc/keyline/gatewayd.toml");
    let modified = fs::read_to_string(t.path("/etc/keyline/gatewayd.toml")).unwrap();

    // Every file the packages own, for the check after the purge.
    let owned: Vec<String> = t
        .sh("dpkg -L keyline-gateway keyline-agent keyline-directory keyline-phone")
        .lines()
        .filter(|l| l.starts_with('/') && !["/.", "/etc", "/usr", "/lib"].contains(l))
        .map(str::to_string)
        .collect();

    // --- upgrade -----------------------------------------------------------
    apt_install(&t, &debs2, "v2");
    for p in PACKAGES {
        assert_eq!(
            t.status(p),
            format!("installed {}", b.v2),
            "{p} after upgrade"
        );
    }
    assert_eq!(
        fs::read_to_string(t.path("/etc/keyline/gatewayd.toml")).unwrap(),
        modified,
        "the locally modified conffile was not kept"
    );
    let leftovers = t.sh("find /etc/keyline -name '*.dpkg-*' -o -name '*.ucf-*'");
    assert!(
        leftovers.trim().is_empty(),
        "conffile leftovers: {leftovers}"
    );
    t.sh("keyline-gatewayd check-config /etc/keyline/gatewayd.toml");
    assert_eq!(
        t.sh("getent passwd keyline").trim(),
        pw,
        "the user changed on upgrade"
    );
    assert!(
        t.exists("/var/lib/keyline/gatewayd/state.db"),
        "state lost on upgrade"
    );
    assert!(t.exists("/etc/systemd/system/multi-user.target.wants/keyline-gatewayd.service"));

    // --- remove ------------------------------------------------------------
    t.sh("apt-get remove -y -q keyline-gateway keyline-agent keyline-directory keyline-phone");
    for p in PACKAGES {
        assert_eq!(
            t.status(p),
            format!("config-files {}", b.v2),
            "{p} after remove"
        );
    }
    for f in [
        "/usr/bin/keyline-gatewayd",
        "/usr/bin/keyline-agent",
        "/usr/bin/keyline-directory",
        "/usr/bin/keyline-phone",
    ] {
        assert!(!t.exists(f), "{f} left after remove");
    }
    assert!(
        t.exists("/etc/keyline/gatewayd.toml"),
        "remove must keep conffiles"
    );
    assert!(
        t.exists("/var/lib/keyline/gatewayd/state.db"),
        "remove must keep state"
    );
    t.sh("getent passwd keyline");

    // --- purge, one at a time: the shared user goes with the last one --------
    t.sh("dpkg --purge keyline-gateway");
    assert!(
        !t.exists("/var/lib/keyline/gatewayd"),
        "gateway state left after purge"
    );
    assert!(
        !t.exists("/etc/keyline/gatewayd.toml"),
        "gateway conffile left after purge"
    );
    assert!(
        t.exists("/var/lib/keyline/directory/state.db"),
        "purging the gateway took the directory's state"
    );
    t.sh("getent passwd keyline"); // still needed by the other two
    t.sh("dpkg --purge keyline-phone keyline-agent keyline-directory");
    for p in PACKAGES {
        let s = t.status(p);
        assert!(
            s.is_empty() || s.starts_with("not-installed"),
            "{p} after purge: {s}"
        );
    }
    let (has_user, _) = t.try_sh("getent passwd keyline");
    assert!(!has_user, "the keyline user is left after the purge");
    let (has_group, _) = t.try_sh("getent group keyline");
    assert!(!has_group, "the keyline group is left after the purge");
    for d in [
        "/etc/keyline",
        "/var/lib/keyline",
        "/usr/share/doc/keyline-gateway",
    ] {
        assert!(!t.exists(d), "{d} left after purge");
    }
    // Directories that were in the root before (shared with other packages)
    // stay; anything else the packages owned must be gone.
    let left: Vec<&String> = owned
        .iter()
        .filter(|f| {
            t.exists(f) && fs::symlink_metadata(cached.join(f.trim_start_matches('/'))).is_err()
        })
        .collect();
    assert!(left.is_empty(), "files left after purge: {left:?}");
    let traces = t.sh(
        "find /etc/systemd /var/lib/systemd -name '*keyline*' 2>/dev/null; \
         grep -l keyline /etc/passwd /etc/group /etc/shadow /etc/gshadow 2>/dev/null || true",
    );
    assert!(traces.trim().is_empty(), "left after purge: {traces}");
    assert!(
        t.processes_inside().is_empty(),
        "{:?}",
        t.processes_inside()
    );
    eprintln!(
        "packaging tests: install/upgrade/remove/purge in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// the units under a real systemd

/// What runs inside the container: start the services, exercise reload
/// (with a good and a broken configuration), look at the sandbox the
/// gateway got, stop everything, power off. Results go to a file as
/// `key=value` lines.
const CHECK_SCRIPT: &str = r#"#!/bin/sh
out=/root/keyline-check.txt
exec >/root/keyline-check.log 2>&1
set -x
say() { echo "$1" >>"$out"; }
wait_for() { # unit, expected is-active
    i=0
    while [ "$(systemctl is-active "$1")" != "$2" ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
}
for u in keyline-gatewayd keyline-directory; do
    wait_for $u active
    say "$u.active=$(systemctl is-active $u)"
    say "$u.status=$(systemctl show -P StatusText $u)"
done
systemctl start keyline-agent-headless
wait_for keyline-agent-headless active
i=0
while ! systemctl show -P StatusText keyline-agent-headless | grep -q "pairing code" && [ $i -lt 60 ]; do
    sleep 0.5; i=$((i + 1))
done
say "agent.active=$(systemctl is-active keyline-agent-headless)"
say "agent.status=$(systemctl show -P StatusText keyline-agent-headless)"
say "gateway.agents=$(keyline-gatewayd --state /var/lib/keyline/gatewayd agents --json | tr -d ' \n')"

pid=$(systemctl show -P MainPID keyline-gatewayd)
say "gateway.user=$(stat -c %U /proc/$pid)"
say "gateway.nonewprivs=$(awk '/^NoNewPrivs:/ {print $2}' /proc/$pid/status)"
say "gateway.seccomp=$(awk '/^Seccomp:/ {print $2}' /proc/$pid/status)"
say "gateway.capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/$pid/status)"
say "gateway.home=$(nsenter -t $pid -m ls /home 2>&1 | head -1)"

systemctl reload keyline-gatewayd && say "gateway.reload=ok" || say "gateway.reload=failed"
say "gateway.after_reload=$(systemctl is-active keyline-gatewayd) $(systemctl show -P MainPID keyline-gatewayd)"
cp /etc/keyline/gatewayd.toml /root/gatewayd.toml.good
echo 'ring_timeout_secs = "forever"' >>/etc/keyline/gatewayd.toml
systemctl reload keyline-gatewayd && say "gateway.bad_reload=ok" || say "gateway.bad_reload=failed"
say "gateway.after_bad_reload=$(systemctl is-active keyline-gatewayd) $(systemctl show -P MainPID keyline-gatewayd)"
cp /root/gatewayd.toml.good /etc/keyline/gatewayd.toml
systemctl reload keyline-directory && say "directory.reload=ok" || say "directory.reload=failed"
say "gateway.pid=$pid"

systemctl stop keyline-agent-headless keyline-gatewayd keyline-directory
for u in keyline-gatewayd keyline-directory keyline-agent-headless; do
    say "$u.stopped=$(systemctl is-active $u) $(systemctl show -P Result $u) $(systemctl show -P ExecMainStatus $u)"
done
journalctl --no-pager -u keyline-gatewayd -u keyline-directory -u keyline-agent-headless >/root/keyline-journal.txt
say "done=1"
systemctl poweroff
"#;

/// Boot the root with systemd as PID 1 (systemd-nspawn, private network:
/// only loopback, so mDNS stays inside) with the v1 packages installed,
/// and check that the sandboxed units really run: READY reached, STATUS
/// lines, the headless agent pairs with the gateway, `systemctl reload`
/// validates before it signals (a broken file fails the reload and the
/// same process keeps running), the sandbox is in force, and a stop ends
/// each daemon with status 0.
#[test]
fn services_run_sandboxed_under_systemd() {
    if !root_or_skip() {
        return;
    }
    ensure_debs(&["systemd-container"]);
    let b = builds();
    let debs1 = b.debs(&b.dir1, &b.v1);
    let cached = cached_root(&debs1);
    let t = TestRoot::new(&cached);
    apt_install(&t, &debs1, "v1");
    // Someone's home, which ProtectHome= must hide from the gateway.
    t.sh("mkdir -p /home/alice && echo secret > /home/alice/notes");
    t.write("/usr/local/sbin/keyline-check", CHECK_SCRIPT);
    t.sh("chmod 755 /usr/local/sbin/keyline-check");
    t.write(
        "/etc/systemd/system/keyline-check.service",
        "[Unit]\nDescription=Keyline packaging test\nAfter=multi-user.target\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/sbin/keyline-check\n",
    );
    t.sh("ln -s /etc/systemd/system/keyline-check.service \
          /etc/systemd/system/multi-user.target.wants/keyline-check.service");
    let started = std::time::Instant::now();
    let machine = format!("keyline-test-{}", std::process::id());
    let o = Command::new("timeout")
        .args(["-k", "10", "240", "systemd-nspawn", "--quiet", "--boot"])
        .args([
            "--private-network",
            "--register=no",
            "--keep-unit",
            "-M",
            &machine,
            "-D",
        ])
        .arg(&t.root)
        .stdin(Stdio::null())
        .output()
        .expect("systemd-nspawn");
    let read = |p: &str| fs::read_to_string(t.path(p)).unwrap_or_default();
    let results = read("/root/keyline-check.txt");
    let context = format!(
        "nspawn: {}\n{}\n--- results\n{results}\n--- check log\n{}\n--- journal\n{}",
        o.status,
        text(&o),
        read("/root/keyline-check.log"),
        read("/root/keyline-journal.txt")
    );
    let get = |k: &str| {
        results
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(get("done"), "1", "the check did not finish\n{context}");
    assert_eq!(get("keyline-gatewayd.active"), "active", "{context}");
    assert_eq!(get("keyline-directory.active"), "active", "{context}");
    assert!(
        get("keyline-gatewayd.status").contains("calls"),
        "{context}"
    );
    assert!(!get("keyline-directory.status").is_empty(), "{context}");
    assert_eq!(get("agent.active"), "active", "{context}");
    assert!(get("agent.status").contains("pairing code"), "{context}");
    assert!(get("gateway.agents").contains("pending"), "{context}");
    // The sandbox as the kernel sees it.
    assert_eq!(get("gateway.user"), "keyline", "{context}");
    assert_eq!(get("gateway.nonewprivs"), "1", "{context}");
    assert_eq!(get("gateway.seccomp"), "2", "no seccomp filter\n{context}");
    assert_eq!(get("gateway.capbnd"), "0000000000000000", "{context}");
    assert!(
        get("gateway.home").is_empty(),
        "ProtectHome: /home visible\n{context}"
    );
    // Reload validates first; a broken file leaves the same process running.
    let pid = get("gateway.pid");
    assert_eq!(get("gateway.reload"), "ok", "{context}");
    assert_eq!(
        get("gateway.after_reload"),
        format!("active {pid}"),
        "{context}"
    );
    assert_eq!(get("gateway.bad_reload"), "failed", "{context}");
    assert_eq!(
        get("gateway.after_bad_reload"),
        format!("active {pid}"),
        "{context}"
    );
    assert_eq!(get("directory.reload"), "ok", "{context}");
    for u in [
        "keyline-gatewayd",
        "keyline-directory",
        "keyline-agent-headless",
    ] {
        assert_eq!(
            get(&format!("{u}.stopped")),
            "inactive success 0",
            "{u}\n{context}"
        );
    }
    assert!(
        t.processes_inside().is_empty(),
        "{:?}",
        t.processes_inside()
    );
    eprintln!("packaging tests: under systemd:\n{}", results.trim_end());
    eprintln!(
        "packaging tests: booted and checked under systemd in {:?}",
        started.elapsed()
    );
}

/// Every setting the packaged configuration files show commented out,
/// uncommented, is taken by `check-config` of the daemon it is for: the
/// examples an administrator copies from cannot drift from what the
/// daemons read.
#[test]
fn the_packaged_example_files_are_valid_uncommented() {
    let scratch = std::env::temp_dir().join(format!("keyline-conf-{}", std::process::id()));
    fs::create_dir_all(&scratch).unwrap();
    for (file, daemon) in [
        ("gatewayd.toml", "keyline-gatewayd"),
        ("directory.toml", "keyline-directory"),
    ] {
        let example = fs::read_to_string(repo().join("packaging/conf").join(file)).unwrap();
        let uncommented: String = example
            .lines()
            .map(|l| {
                let rest = l.strip_prefix('#').unwrap_or(l);
                let key = rest.split(" = ").next().unwrap_or("");
                let setting = rest.starts_with('[')
                    || (rest.contains(" = ")
                        && !key.is_empty()
                        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
                if setting {
                    rest
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(uncommented.contains("\n[limits]"), "{file} shows [limits]");
        let path = scratch.join(file);
        fs::write(&path, &uncommented).unwrap();
        // <target>/<profile>/deps/<test binary>: the daemons are in <profile>.
        let exe = std::env::current_exe().unwrap();
        let bin = exe.ancestors().nth(2).unwrap().join(daemon);
        let o = Command::new(&bin)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(o.status.success(), "{file} uncommented: {}", text(&o));
    }
    let _ = fs::remove_dir_all(&scratch);
}
