//! The operation log of the local tier: video submissions recorded before they are sent, and
//! the operation each became, so a build that ended resumes polling instead of paying again
//! (shared with the remote tier when one is configured).

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::{Store, now_secs};
use crate::backends::{OperationLog, Pending};

/// `operations(operation_name, state, submitted_at, detail)`.
type OperationRow = (String, String, i64, Option<String>);

impl OperationLog for Store {
    fn pending(&self, key: &str, backend: &str) -> Option<Pending> {
        let conn = self.conn();
        let row: rusqlite::Result<Option<OperationRow>> = conn
            .prepare_cached(
                "SELECT operation_name, state, submitted_at, detail FROM operations
                 WHERE key = ?1 AND backend = ?2",
            )
            .and_then(|mut st| {
                st.query_row([key, backend], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            });
        // A record that cannot be read might be a paid job: never a reason to submit again.
        let row = match row {
            Ok(row) => row?,
            Err(e) => {
                return Some(Pending::Uncertain {
                    since: now_secs(),
                    detail: format!("the cache database could not be read ({e}): run `ttv verify`"),
                });
            }
        };
        let (name, state, since, detail) = row;
        Some(match state.as_str() {
            "submitted" if !name.is_empty() => Pending::Operation(name),
            // An intent still there was sent by a build that ended (killed, crashed) before the
            // answer was recorded.
            "intent" => Pending::Uncertain {
                since,
                detail: "the build that sent it ended before its answer was recorded".into(),
            },
            _ => Pending::Uncertain {
                since,
                detail: detail.unwrap_or_else(|| "no answer was read".into()),
            },
        })
    }

    fn intend(&self, key: &str, backend: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state)
             VALUES (?1, ?2, '', ?3, 'intent')",
            params![key, backend, now_secs()],
        )?;
        Ok(())
    }

    fn uncertain(&self, key: &str, backend: &str, detail: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state,
                detail)
             VALUES (?1, ?2, '', ?3, 'uncertain', ?4)",
            params![key, backend, now_secs(), detail],
        )?;
        Ok(())
    }

    fn record(&self, key: &str, backend: &str, operation_name: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state)
             VALUES (?1, ?2, ?3, ?4, 'submitted')",
            params![key, backend, operation_name, now_secs()],
        )?;
        // Shared, so a build resumed on another machine polls this operation too.
        self.share_operation(key, Some((backend, operation_name)));
        Ok(())
    }

    fn clear(&self, key: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM operations WHERE key = ?1", [key])?;
        self.share_operation(key, None);
        Ok(())
    }
}
