//! Call records: written at the end of every call, kept in memory (at most
//! [`UNWRITTEN_MAX`]) while the disk is full and written once there is
//! room; searched for the control API and the admin site.

use super::*;

impl Db {
    /// Write a call record. One that cannot be written now (a full disk)
    /// is kept, with any kept before it, and written first next time: the
    /// error says how many wait. At most [`UNWRITTEN_MAX`] are kept; past
    /// that the oldest go.
    pub fn insert_cdr(&self, row: &CdrRow) -> Result<()> {
        let mut waiting = self.unwritten_lock()?;
        waiting.push_back(row.clone());
        if waiting.len() > UNWRITTEN_MAX {
            waiting.pop_front();
            tracing::error!("more than {UNWRITTEN_MAX} call records unwritten: the oldest is lost");
        }
        self.write_waiting(&mut waiting)
    }

    /// Write the call records kept while the disk was full; how many.
    pub fn write_unwritten(&self) -> Result<usize> {
        let mut waiting = self.unwritten_lock()?;
        let n = waiting.len();
        if n > 0 {
            self.write_waiting(&mut waiting)?;
        }
        Ok(n)
    }

    /// Call records waiting to be written.
    pub fn unwritten_count(&self) -> usize {
        self.unwritten_lock().map(|w| w.len()).unwrap_or(0)
    }

    fn unwritten_lock(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<CdrRow>>> {
        self.unwritten
            .lock()
            .map_err(|_| anyhow::anyhow!("call record queue lock poisoned"))
    }

    /// All of `waiting` in one transaction, in order; kept on failure.
    fn write_waiting(&self, waiting: &mut VecDeque<CdrRow>) -> Result<()> {
        let written = self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO calls (call_id, caller, callee, started_ms, answered_ms, ended_ms, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for row in waiting.iter() {
                    st.execute(params![
                        row.call_id,
                        row.caller,
                        row.callee,
                        row.start_ms,
                        row.answer_ms,
                        row.end_ms,
                        row.outcome
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        });
        match written {
            Ok(()) => {
                waiting.clear();
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "{} call record(s) kept in memory until they can be written",
                waiting.len()
            ))),
        }
    }

    /// The newest `limit` call records that match `f`, oldest first.
    pub fn cdr_search(&self, limit: u32, f: &crate::api::CdrFilter) -> Result<Vec<CdrRow>> {
        if f == &crate::api::CdrFilter::default() {
            return self.cdr(limit);
        }
        let like = f.number.as_ref().map(|n| {
            let escaped = n
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, call_id, caller, callee, started_ms, answered_ms, ended_ms, outcome
                 FROM (SELECT * FROM calls
                       WHERE (?1 IS NULL OR caller LIKE ?1 ESCAPE '\\' OR callee LIKE ?1 ESCAPE '\\')
                         AND (?2 IS NULL OR started_ms >= ?2)
                         AND (?3 IS NULL OR started_ms < ?3)
                         AND (?4 IS NULL OR outcome = ?4)
                         AND (?5 IS NULL OR id = ?5)
                       ORDER BY id DESC LIMIT ?6) ORDER BY id",
            )?;
            let rows = st
                .query_map(
                    params![like, f.from_ms, f.to_ms, f.outcome, f.id, limit],
                    |r| {
                        Ok(CdrRow {
                            id: r.get(0)?,
                            call_id: r.get(1)?,
                            caller: r.get(2)?,
                            callee: r.get(3)?,
                            start_ms: r.get(4)?,
                            answer_ms: r.get(5)?,
                            end_ms: r.get(6)?,
                            outcome: r.get(7)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn cdr(&self, limit: u32) -> Result<Vec<CdrRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, call_id, caller, callee, started_ms, answered_ms, ended_ms, outcome
                 FROM (SELECT * FROM calls ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )?;
            let rows = st
                .query_map([limit], |r| {
                    Ok(CdrRow {
                        id: r.get(0)?,
                        call_id: r.get(1)?,
                        caller: r.get(2)?,
                        callee: r.get(3)?,
                        start_ms: r.get(4)?,
                        answer_ms: r.get(5)?,
                        end_ms: r.get(6)?,
                        outcome: r.get(7)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .map(|mut rows| {
            // Newer than anything written: the ones still waiting (id 0).
            if let Ok(waiting) = self.unwritten_lock() {
                rows.extend(waiting.iter().cloned());
                let extra = rows.len().saturating_sub(limit as usize);
                rows.drain(..extra);
            }
            rows
        })
    }
}
