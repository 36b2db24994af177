//! Password hashing (argon2id) on threads of its own.
//!
//! A check costs about 15–20 ms of one core and 19 MiB of memory, on
//! purpose. The directory's first duty is to its phones: registrations,
//! look-ups and calls. So the hashes run on a small pool of threads (half
//! the cores, at least one) that the kernel schedules below the event
//! loop. By default they are `SCHED_IDLE` threads: they run at full speed
//! on any CPU the event loop leaves free, and a registration arriving
//! preempts them at once. `low` (nice 10) shares the CPU by weight
//! instead, and `normal` runs them as any thread.
//!
//! `SCHED_IDLE` threads starve while anything else on the machine wants
//! the CPU, so one more thread, at the daemon's own priority, takes any
//! job that has waited 200 ms, within a budget (a twentieth of one core by
//! default): logins then go on, more slowly, however busy the machine.
//!
//! Jobs wait in a short queue (a few per thread), at most `max_wait`:
//! when the queue is full, or a job has waited too long, the caller is
//! told that the directory is busy, so that a login storm is turned away
//! in microseconds instead of piling up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full, or the job waited its longest: try again in a
    /// moment.
    Busy,
    /// The pool is gone (the directory is stopping).
    Stopped,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Busy => "the directory is busy checking passwords; try again in a moment",
            Refused::Stopped => "the directory is stopping",
        })
    }
}

impl std::error::Error for Refused {}

/// How the hashing threads are scheduled beside the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// `SCHED_IDLE`: only CPU nothing else wants; preempted at once.
    Idle,
    /// Nice 10: about a tenth of the weight of the event loop's threads.
    Low,
    /// As every other thread of the daemon.
    Normal,
}

/// How the pool is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// Threads (0: half the cores, at least one).
    pub threads: usize,
    /// Jobs waiting per thread before callers are turned away.
    pub queue_per_thread: usize,
    pub priority: Priority,
    /// Longest a job waits for a thread before its caller is turned away.
    pub max_wait: Duration,
    /// With `idle` or `low`: the share of one core a further thread, at
    /// the daemon's own priority, may spend on jobs that waited 200 ms,
    /// so that logins go on (slowly) on a machine with no CPU to spare;
    /// 0: none.
    pub floor_share: f64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: 0,
            queue_per_thread: 8,
            priority: Priority::Idle,
            max_wait: Duration::from_secs(3),
            floor_share: 0.05,
        }
    }
}

impl PoolConfig {
    /// The threads this config makes on a machine with `cores` cores.
    pub fn threads_for(&self, cores: usize) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            (cores / 2).max(1)
        }
    }
}

/// Counters of the pool, for `status` and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs run (counted as they start).
    pub done: AtomicU64,
    /// Callers turned away: the queue was full or they waited too long.
    pub refused_busy: AtomicU64,
    /// Jobs the floor thread ran (counted as they start).
    pub at_floor: AtomicU64,
}

/// A job: run with `true`, or told with `false` that it came too late.
struct Job {
    queued: Instant,
    work: Box<dyn FnOnce(bool) + Send>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("queued", &self.queued).finish()
    }
}

/// The jobs waiting, shared by the threads.
#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    cap: usize,
    max_wait: Duration,
    stats: PoolStats,
}

/// CPU time the floor thread may spend: `share` of one core, with up to
/// `burst` saved up while it had nothing to do. Time is passed in.
#[derive(Debug, Clone)]
struct Budget {
    share: f64,
    burst: f64,
    /// Seconds that may be spent now (negative: owed).
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(share: f64, burst: Duration, now: Instant) -> Budget {
        Budget {
            share,
            burst: burst.as_secs_f64(),
            tokens: burst.as_secs_f64(),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.share).min(self.burst);
        self.at = now;
    }

    /// How long until a job may start (zero: now).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 || self.share <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.share)
        }
    }

    fn charge(&mut self, now: Instant, spent: Duration) {
        self.refill(now);
        self.tokens -= spent.as_secs_f64();
    }
}

/// The pool. Dropping it lets the threads end once the queue is empty.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
}

impl Pool {
    pub fn start(cfg: PoolConfig) -> std::io::Result<Pool> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cfg.threads_for(cores);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            cap: threads * cfg.queue_per_thread.max(1),
            max_wait: cfg.max_wait,
            stats: PoolStats::default(),
        });
        let pool = Pool {
            shared: Arc::clone(&shared),
            threads,
        };
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let priority = cfg.priority;
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&shared, priority))?;
        }
        if cfg.priority != Priority::Normal && cfg.floor_share > 0.0 {
            let shared = Arc::clone(&shared);
            let budget = Budget::new(cfg.floor_share.min(1.0), FLOOR_BURST, Instant::now());
            std::thread::Builder::new()
                .name("argon2-floor".into())
                .spawn(move || floor_worker(&shared, budget))?;
        }
        Ok(pool)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn stats(&self) -> &PoolStats {
        &self.shared.stats
    }

    /// Run `f` on the pool and wait for its result, or be turned away:
    /// at once when the queue is full, after `max_wait` when no thread
    /// took it by then (it is then dropped unrun).
    pub async fn run<T, F>(&self, f: F) -> Result<T, Refused>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel::<Result<T, Refused>>();
        let job = Job {
            queued: Instant::now(),
            work: Box::new(move |in_time| {
                // The caller gave up (timed out, or its connection went):
                // nothing to compute.
                if done.is_closed() {
                    return;
                }
                let _ = done.send(if in_time { Ok(f()) } else { Err(Refused::Busy) });
            }),
        };
        let stats = &self.shared.stats;
        {
            let Ok(mut q) = self.shared.queue.lock() else {
                return Err(Refused::Stopped);
            };
            if q.closed {
                return Err(Refused::Stopped);
            }
            if q.jobs.len() >= self.shared.cap {
                stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Busy);
            }
            q.jobs.push_back(job);
        }
        // Every thread: the floor thread may not take a fresh job, and a
        // hashing thread must not miss it.
        self.shared.changed.notify_all();
        // A started job is waited for to the end (argon2 takes tens of
        // milliseconds); the limit is on waiting for a thread, which the
        // threads check, plus this margin for threads that get no CPU.
        let answer = tokio::time::timeout(self.shared.max_wait * 2, result).await;
        match answer {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(r))) => {
                stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                Err(r)
            }
            Ok(Err(_)) => Err(Refused::Stopped),
            Err(_) => {
                stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Busy)
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.changed.notify_all();
    }
}

/// A job the floor thread takes must have waited this long: the hashing
/// threads had their chance.
const FLOOR_DELAY: Duration = Duration::from_millis(200);
/// CPU time the floor thread may save up (about 12 checks).
const FLOOR_BURST: Duration = Duration::from_millis(250);

/// Run `job`, or tell it that it came too late. It is counted (and, when
/// `floor`, counted as the floor thread's) before it runs: whoever has
/// its answer finds it counted.
fn run_job(shared: &Shared, job: Job, floor: bool) {
    let in_time = job.queued.elapsed() <= shared.max_wait;
    if in_time {
        shared.stats.done.fetch_add(1, Ordering::Relaxed);
        if floor {
            shared.stats.at_floor.fetch_add(1, Ordering::Relaxed);
        }
    }
    (job.work)(in_time);
}

fn worker(shared: &Shared, priority: Priority) {
    if let Err(e) = set_priority(priority) {
        tracing::warn!("password hashing runs at the daemon's priority: {e}");
    }
    loop {
        let job = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = match shared.changed.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        run_job(shared, job, false);
    }
}

/// The thread that keeps logins going when the hashing threads get no
/// CPU (a machine busy with registrations, or with other programs): at
/// the daemon's own priority, it takes a job that has waited
/// [`FLOOR_DELAY`], within a budget of CPU time.
fn floor_worker(shared: &Shared, mut budget: Budget) {
    loop {
        let job = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            loop {
                let now = Instant::now();
                let pause = match q.jobs.front() {
                    None if q.closed => return,
                    None => None,
                    Some(j) => {
                        let age = now.saturating_duration_since(j.queued);
                        if age < FLOOR_DELAY {
                            Some(FLOOR_DELAY - age)
                        } else {
                            let w = budget.wait(now);
                            if w.is_zero() {
                                if let Some(job) = q.jobs.pop_front() {
                                    break job;
                                }
                                None
                            } else {
                                Some(w)
                            }
                        }
                    }
                };
                q = match pause {
                    None => match shared.changed.wait(q) {
                        Ok(q) => q,
                        Err(_) => return,
                    },
                    Some(d) => match shared.changed.wait_timeout(q, d) {
                        Ok((q, _)) => q,
                        Err(_) => return,
                    },
                };
            }
        };
        let t = Instant::now();
        run_job(shared, job, true);
        budget.charge(Instant::now(), t.elapsed());
    }
}

/// Schedule the calling thread (only) at `priority`. On Linux a thread's
/// policy and nice value are its own; lowering either needs no privilege.
#[allow(unsafe_code)]
fn set_priority(priority: Priority) -> std::io::Result<()> {
    let rc = match priority {
        Priority::Normal => return Ok(()),
        Priority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is the calling thread; `param` is a valid
            // sched_param that outlives the call, which only reads it.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }
        }
        Priority::Low => {
            let tid = nix::unistd::gettid().as_raw();
            // SAFETY: setpriority takes three integers and reads or
            // writes no memory of ours; a bad argument is an error return.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value and scheduling policy, from
/// `/proc/self/task/TID/stat`.
#[cfg(test)]
fn own_scheduling() -> (i32, u32) {
    let stat = std::fs::read_to_string(format!(
        "/proc/self/task/{}/stat",
        nix::unistd::gettid().as_raw()
    ))
    .unwrap_or_default();
    // Fields counted from 1; after the command's ')' comes field 3.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    (
        field(19).map_or(i32::MIN, |v| v as i32),
        field(41).map_or(u32::MAX, |v| v as u32),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn pool(threads: usize, queue: usize, priority: Priority, max_wait_ms: u64) -> Arc<Pool> {
        pool_with_floor(threads, queue, priority, max_wait_ms, 0.0)
    }

    fn pool_with_floor(
        threads: usize,
        queue: usize,
        priority: Priority,
        max_wait_ms: u64,
        floor_share: f64,
    ) -> Arc<Pool> {
        Arc::new(
            Pool::start(PoolConfig {
                threads,
                queue_per_thread: queue,
                priority,
                max_wait: Duration::from_millis(max_wait_ms),
                floor_share,
            })
            .expect("pool"),
        )
    }

    #[test]
    fn the_floor_budget_is_a_share_of_a_core_with_a_burst() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Budget::new(0.1, ms(500), t0);
        // The burst is there from the start: 25 jobs of 20 ms at once.
        for _ in 0..25 {
            assert_eq!(b.wait(t0), Duration::ZERO);
            b.charge(t0, ms(20));
        }
        // Spent; owed nothing yet, so one more may start, then it waits
        // ten times what it spent.
        assert_eq!(b.wait(t0), Duration::ZERO);
        b.charge(t0, ms(20));
        let w = b.wait(t0);
        assert!(w > ms(199) && w <= ms(200), "{w:?}");
        assert_eq!(b.wait(t0 + ms(200)), Duration::ZERO);
        // Saving up stops at the burst.
        let later = t0 + Duration::from_secs(3600);
        b.refill(later);
        assert!((b.tokens - 0.5).abs() < 1e-9, "{}", b.tokens);
        // Sustained: 10 s of jobs of 20 ms, each started when allowed,
        // spend at most a tenth of the time plus the burst.
        let mut now = later;
        let mut spent = Duration::ZERO;
        while now < later + Duration::from_secs(10) {
            now += b.wait(now);
            b.charge(now, ms(20));
            spent += ms(20);
            now += ms(20);
        }
        assert!(spent <= ms(1000 + 500 + 20), "{spent:?}");
        assert!(spent >= ms(1000), "{spent:?}");
    }

    #[test]
    fn the_floor_thread_takes_a_job_the_hashing_threads_leave() {
        // One hashing thread (SCHED_IDLE) and the floor thread. A first
        // job is held until released. Normally the hashing thread takes
        // it and the second job, left waiting, goes to the floor thread
        // once it has waited 200 ms. On a machine with no CPU to spare
        // the hashing thread may not run for 200 ms at all: then the
        // floor thread takes the first job itself, which is the same
        // rule. Either way a job ran on the floor thread, only after it
        // had waited FLOOR_DELAY, and was counted by the time its caller
        // had the answer.
        let pool = pool_with_floor(1, 4, Priority::Idle, 5000, 0.5);
        let name = || std::thread::current().name().map(str::to_owned);
        rt().block_on(async {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let (started_tx, started) = tokio::sync::oneshot::channel();
            let p = Arc::clone(&pool);
            let t = Instant::now();
            let first = tokio::spawn(async move {
                p.run(move || {
                    let _ = started_tx.send((name(), t.elapsed()));
                    let _ = held.recv_timeout(Duration::from_secs(10));
                    1
                })
                .await
            });
            let (holder, held_waited) = started.await.expect("first job started");
            let floor = Some("argon2-floor".to_string());
            if holder == floor {
                assert!(held_waited >= FLOOR_DELAY, "{held_waited:?}");
                assert_eq!(pool.stats().at_floor.load(Ordering::Relaxed), 1);
            } else {
                assert_eq!(holder.as_deref(), Some("argon2-0"));
                let t = Instant::now();
                let (ran_on, waited) = pool.run(move || (name(), t.elapsed())).await.expect("ran");
                assert_eq!(ran_on, floor);
                assert!(waited >= FLOOR_DELAY, "{waited:?}");
                assert_eq!(pool.stats().at_floor.load(Ordering::Relaxed), 1);
            }
            release.send(()).expect("release");
            assert_eq!(first.await.expect("join"), Ok(1));
        });
    }

    #[test]
    fn jobs_run_on_threads_scheduled_below_the_caller() {
        let rt = rt();
        let (here_nice, here_policy) = own_scheduling();
        assert_eq!(here_policy, libc::SCHED_OTHER as u32);
        let idle = pool(2, 4, Priority::Idle, 1000);
        assert_eq!(idle.threads(), 2);
        let ((_, policy), name) = rt
            .block_on(idle.run(|| {
                (
                    own_scheduling(),
                    std::thread::current().name().map(str::to_owned),
                )
            }))
            .expect("ran");
        assert_eq!(policy, libc::SCHED_IDLE as u32);
        assert!(name.is_some_and(|n| n.starts_with("argon2-")));
        let low = pool(1, 4, Priority::Low, 1000);
        let (nice, policy) = rt.block_on(low.run(own_scheduling)).expect("ran");
        assert_eq!(
            (nice, policy),
            (10.max(here_nice), libc::SCHED_OTHER as u32)
        );
        let normal = pool(1, 4, Priority::Normal, 1000);
        assert_eq!(
            rt.block_on(normal.run(own_scheduling)),
            Ok((here_nice, here_policy))
        );
        // The caller's thread kept its own.
        assert_eq!(own_scheduling(), (here_nice, here_policy));
        assert_eq!(idle.stats().done.load(Ordering::Relaxed), 1);
    }

    /// One job holds the only thread until released; returns the release.
    async fn hold(
        pool: &Arc<Pool>,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<i32, Refused>>,
    ) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let p = Arc::clone(pool);
        let first = tokio::spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = held.recv_timeout(Duration::from_secs(10));
                1
            })
            .await
        });
        started.await.expect("first job started");
        (release, first)
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_serves_again_after() {
        let pool = pool(1, 2, Priority::Normal, 5000);
        rt().block_on(async {
            let (release, first) = hold(&pool).await;
            let queued: Vec<_> = (2..4)
                .map(|i| {
                    let p = Arc::clone(&pool);
                    tokio::spawn(async move { p.run(move || i).await })
                })
                .collect();
            // Let the two queued jobs reach the channel (one thread: the
            // spawned tasks run when this one yields).
            tokio::task::yield_now().await;
            assert_eq!(pool.run(|| 99).await, Err(Refused::Busy));
            assert_eq!(pool.stats().refused_busy.load(Ordering::Relaxed), 1);
            release.send(()).expect("release");
            assert_eq!(first.await.expect("join"), Ok(1));
            for (q, want) in queued.into_iter().zip(2..) {
                assert_eq!(q.await.expect("join"), Ok(want));
            }
            assert_eq!(pool.run(|| 5).await, Ok(5));
        });
    }

    #[test]
    fn a_job_that_waited_too_long_is_turned_away_unrun() {
        // Longest wait 200 ms; the held job takes 300 ms (under the
        // caller's own limit of twice that), so the second waits too long.
        let pool = pool(1, 4, Priority::Normal, 200);
        rt().block_on(async {
            let (release, first) = hold(&pool).await;
            let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let r = Arc::clone(&ran);
            let p = Arc::clone(&pool);
            let late =
                tokio::spawn(async move { p.run(move || r.store(true, Ordering::Relaxed)).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            release.send(()).expect("release");
            assert_eq!(first.await.expect("join"), Ok(1));
            assert_eq!(late.await.expect("join"), Err(Refused::Busy));
            assert!(!ran.load(Ordering::Relaxed), "a late job is not run");
            assert_eq!(pool.stats().refused_busy.load(Ordering::Relaxed), 1);
            assert_eq!(pool.run(|| 7).await, Ok(7));
        });
    }
}
