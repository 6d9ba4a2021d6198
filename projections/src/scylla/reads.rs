//! The API's reads against Scylla. Listings walk a partition family newest month first with
//! the driver's paging; filters the tables cannot serve by key are applied while paging, and a
//! filtered listing reads the whole family to count it (a user's inbox, a thread's history).

use uuid::Uuid;

use exchange::dispatch::DispatchTask;

use super::target::{OUTBOX_SHARDS, message_from, notification_from, outbox_id};
use super::{ScyllaStore, count, from_ns, parse_json};
use crate::fold::Position;
use crate::model::{
    Device, FailedDelivery, HistoryQuery, InboxFilter, InboxQuery, InboxStats, Notification, Page,
    Receipt, ReceiptStatus, StatusFilter, StoredMessage, Thread, ThreadMessage,
};
use crate::store::{StoreError, StoreResult};

fn skip(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

fn page<T>(mut all: Vec<T>, offset: u64, limit: u32) -> Vec<T> {
    let start = skip(offset).min(all.len());
    let end = start.saturating_add(limit as usize).min(all.len());
    all.truncate(end);
    all.split_off(start)
}

/// Whether an inbox entry passes a listing's filter.
fn matches(q: &InboxQuery, n: &Notification) -> bool {
    let f = &q.filter;
    let status_ok = match f.status {
        None => n.archived_at.is_none(),
        Some(StatusFilter::Unread) => n.read_at.is_none() && n.archived_at.is_none(),
        Some(StatusFilter::Read) => n.read_at.is_some() && n.archived_at.is_none(),
        Some(StatusFilter::Archived) => n.archived_at.is_some(),
        Some(StatusFilter::All) => true,
    };
    status_ok
        && f.ntype.as_ref().is_none_or(|t| n.ntype.as_ref() == Some(t))
        && f.sender.as_ref().is_none_or(|s| &n.sender == s)
        && f.level.is_none_or(|l| n.level == l)
        && f.tid.is_none_or(|t| n.tid == Some(t))
        && f.since.is_none_or(|t| n.created_at >= t)
        && f.before.is_none_or(|t| n.created_at < t)
        && (!f.direct || n.tid.is_none())
        && f.forclient
            .is_none_or(|c| InboxFilter::is_forclient(&n.opts) == c)
        && q.after.is_none_or(|a| n.seq > a)
}

impl ScyllaStore {
    pub(super) async fn thread_by_id(&self, tid: Uuid) -> StoreResult<Option<Thread>> {
        let Some(r) = self.one(self.q().thread_get(tid)).await? else {
            return Ok(None);
        };
        Ok(Some(Thread {
            tid,
            name: r.0,
            owner: r.1,
            open_subscribe: r.2,
            open_publish: r.3,
            created_at: from_ns(r.4)?,
            subscribers: count(r.5),
            messages: count(r.6),
            alias: r.7,
        }))
    }

    /// A thread's history, newest first. Unfiltered, it stops reading once the page is full
    /// and takes the total from the thread's count.
    pub(super) async fn history(
        &self,
        tid: Uuid,
        q: &HistoryQuery,
    ) -> StoreResult<Page<ThreadMessage>> {
        let filtered = q.sender.is_some() || q.since.is_some() || q.before.is_some();
        let wanted = skip(q.offset).saturating_add(q.limit as usize);
        let mut months: Vec<i32> = self
            .all(self.q().thread_months_of(tid))
            .await?
            .into_iter()
            .map(|(m,)| m)
            .collect();
        months.sort_unstable_by(|a, b| b.cmp(a));
        let mut rows = Vec::new();
        for m in months {
            if !filtered && rows.len() >= wanted {
                break;
            }
            self.scan(
                self.q().thread_messages_in(tid, m),
                |(seq, mid, sender, msg, opts, at): (i64, Uuid, String, String, String, i64)| {
                    let m = ThreadMessage {
                        mid,
                        tid,
                        sender,
                        msg,
                        opts: parse_json(&opts)?,
                        created_at: from_ns(at)?,
                    };
                    let keep = q.sender.as_ref().is_none_or(|s| &m.sender == s)
                        && q.since.is_none_or(|t| m.created_at >= t)
                        && q.before.is_none_or(|t| m.created_at < t);
                    if keep {
                        rows.push((seq, m));
                    }
                    Ok(filtered || rows.len() < wanted)
                },
            )
            .await?;
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        let total = if filtered {
            rows.len() as u64
        } else {
            self.thread_by_id(tid).await?.map_or(0, |t| t.messages)
        };
        let items = page(rows, q.offset, q.limit)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        Ok(Page { items, total })
    }

    pub(super) async fn devices_of(&self, uid: &str) -> StoreResult<Vec<Device>> {
        let mut out = self
            .all(self.q().devices_of(uid))
            .await?
            .into_iter()
            .map(|(id, address, at)| {
                Ok(Device {
                    id,
                    uid: uid.to_owned(),
                    address: parse_json(&address)?,
                    enlisted_at: from_ns(at)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by(|a, b| b.enlisted_at.cmp(&a.enlisted_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Every entry of a user's inbox, newest month first.
    async fn whole_inbox(&self, uid: &str) -> StoreResult<Vec<Notification>> {
        let months = self.months_newest_first(uid).await?;
        let mut out = Vec::new();
        for m in months {
            for r in self.all(self.q().inbox_in_month(uid, m)).await? {
                let (seq, rest) = (r.0, (r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10));
                out.push(notification_from(uid, seq, rest)?);
            }
        }
        Ok(out)
    }

    /// A page of a user's inbox and the position of their newest entry among the entries read
    /// (so a client continuing from it neither skips nor repeats one).
    pub(super) async fn inbox_page(
        &self,
        uid: &str,
        q: &InboxQuery,
    ) -> StoreResult<(Page<Notification>, u64)> {
        if let Some(after) = q.after {
            return self.inbox_after(uid, q, after).await;
        }
        let f = &q.filter;
        let status_only = f.ntype.is_none()
            && f.sender.is_none()
            && f.level.is_none()
            && f.tid.is_none()
            && f.since.is_none()
            && f.before.is_none()
            && !f.direct
            && f.forclient.is_none();
        if status_only {
            return self.inbox_newest(uid, q).await;
        }
        let all = self.whole_inbox(uid).await?;
        let position = all.iter().map(|n| n.seq).max().unwrap_or(0);
        let mut hits: Vec<Notification> = all.into_iter().filter(|n| matches(q, n)).collect();
        hits.sort_by_key(|n| std::cmp::Reverse(n.seq));
        let total = hits.len() as u64;
        Ok((
            Page {
                items: page(hits, q.offset, q.limit),
                total,
            },
            position,
        ))
    }

    /// The newest position among a user's entries (0 when none): the first row of each month.
    async fn newest_position(&self, uid: &str, months: &[i32]) -> StoreResult<i64> {
        let mut newest = 0_i64;
        for m in months {
            if let Some((seq, _)) = self.one(self.q().inbox_newest_in_month(uid, *m)).await? {
                newest = newest.max(seq);
            }
        }
        Ok(newest)
    }

    async fn months_newest_first(&self, uid: &str) -> StoreResult<Vec<i32>> {
        let mut months: Vec<i32> = self
            .all(self.q().inbox_months_of(uid))
            .await?
            .into_iter()
            .map(|(m,)| m)
            .collect();
        months.sort_unstable_by(|a, b| b.cmp(a));
        Ok(months)
    }

    /// A listing filtered by status at most, newest first: months are read newest first and
    /// reading stops once the page is full; the total comes from the user's counts. Entries
    /// newer than the position read first are left out (they belong to the next sync).
    async fn inbox_newest(
        &self,
        uid: &str,
        q: &InboxQuery,
    ) -> StoreResult<(Page<Notification>, u64)> {
        let c = self.one(self.q().counts_get(uid)).await?;
        let (all, unread, archived) = c.map_or((0, 0, 0), |r| (count(r.0), count(r.1), count(r.5)));
        let total = match q.filter.status {
            None => all.saturating_sub(archived),
            Some(StatusFilter::All) => all,
            Some(StatusFilter::Unread) => unread,
            Some(StatusFilter::Read) => all.saturating_sub(archived).saturating_sub(unread),
            Some(StatusFilter::Archived) => archived,
        };
        let months = self.months_newest_first(uid).await?;
        let newest = self.newest_position(uid, &months).await?;
        let wanted = skip(q.offset).saturating_add(q.limit as usize);
        let mut hits = Vec::new();
        for m in months {
            if hits.len() >= wanted {
                break;
            }
            self.scan(self.q().inbox_in_month(uid, m), |r| {
                if r.0 > newest {
                    return Ok(true);
                }
                let (seq, rest) = (r.0, (r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10));
                let n = notification_from(uid, seq, rest)?;
                if matches(q, &n) {
                    hits.push(n);
                }
                Ok(hits.len() < wanted)
            })
            .await?;
        }
        hits.sort_by_key(|n| std::cmp::Reverse(n.seq));
        Ok((
            Page {
                items: page(hits, q.offset, q.limit),
                total,
            },
            newest.max(0) as u64,
        ))
    }

    /// Cursor sync: the entries after a position, oldest first, reading only those (a slice
    /// of each month's partition). The newest position is read first; entries that arrive
    /// while the slices are read are left for the next sync, so the cursor neither skips nor
    /// repeats one.
    async fn inbox_after(
        &self,
        uid: &str,
        q: &InboxQuery,
        after: u64,
    ) -> StoreResult<(Page<Notification>, u64)> {
        let months = self.months_newest_first(uid).await?;
        let newest = self.newest_position(uid, &months).await?;
        let mut hits = Vec::new();
        for m in months {
            for r in self
                .all(self.q().inbox_after_in_month(uid, m, super::seq_i64(after)))
                .await?
            {
                if r.0 > newest {
                    continue;
                }
                let (seq, rest) = (r.0, (r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10));
                let n = notification_from(uid, seq, rest)?;
                if matches(q, &n) {
                    hits.push(n);
                }
            }
        }
        hits.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.id.cmp(&b.id)));
        let total = hits.len() as u64;
        Ok((
            Page {
                items: page(hits, q.offset, q.limit),
                total,
            },
            newest.max(0) as u64,
        ))
    }

    /// A user's change feed after a position (SSE resume), oldest first: the stored changes
    /// (state changes, and the arrival of entries deleted since) merged with the `new` changes
    /// derived from the entries, each as the frame the fold sent. Both start at the user's
    /// feed floor: the first position of the day [`CHANGE_RETENTION`] before the day of
    /// their newest entry, where the fold's pruning of stored changes cuts too (at least that
    /// much history is kept).
    ///
    /// [`CHANGE_RETENTION`]: crate::fold::CHANGE_RETENTION
    pub(super) async fn feed_after(
        &self,
        uid: &str,
        after: Position,
        limit: u32,
    ) -> StoreResult<Vec<(Position, String)>> {
        let limit = limit.max(1);
        let months = self.months_newest_first(uid).await?;
        let floor = self.feed_floor(uid, &months).await?;
        let from = match floor.checked_sub(1) {
            Some(below) => after.max(Position {
                seq: below,
                sub: i64::MAX as u64,
            }),
            None => after,
        };
        let stored: Vec<(Position, String)> = self
            .all(self.q().changes_after(
                uid,
                super::seq_i64(from.seq),
                super::seq_i64(from.sub),
                i32::try_from(limit).unwrap_or(i32::MAX),
            ))
            .await?
            .into_iter()
            .map(|(seq, sub, frame)| {
                let p = Position {
                    seq: seq.max(0) as u64,
                    sub: sub.max(0) as u64,
                };
                (p, frame)
            })
            .collect();
        // A `new` change sits at (seq, seq) of its entry.
        let mut derived = Vec::new();
        for m in months {
            let rows = self
                .all(self.q().inbox_after_in_month(
                    uid,
                    m,
                    super::seq_i64(from.seq).saturating_sub(1),
                ))
                .await?;
            for r in rows {
                let (seq, rest) = (r.0, (r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10));
                let n = notification_from(uid, seq, rest)?;
                let p = Position {
                    seq: n.seq,
                    sub: n.seq,
                };
                if p > from {
                    derived.push((p, n));
                }
            }
        }
        derived.sort_by_key(|(p, _)| *p);
        derived.truncate(limit as usize);
        // Merge the two ordered lists; a position in both (a `new` change stored before
        // entries derived theirs) is given once.
        let mut out = Vec::with_capacity(stored.len() + derived.len());
        let mut derived = derived.into_iter().peekable();
        for (p, frame) in stored {
            while let Some((q, n)) = derived.next_if(|(q, _)| *q <= p) {
                if q < p {
                    out.push((q, new_frame_text(&n)));
                }
            }
            out.push((p, frame));
        }
        out.extend(derived.map(|(q, n)| (q, new_frame_text(&n))));
        out.truncate(limit as usize);
        Ok(out)
    }

    /// Where a user's change feed starts (see `feed_after`); 0 when it keeps everything.
    async fn feed_floor(&self, uid: &str, months_newest_first: &[i32]) -> StoreResult<u64> {
        let mut newest = None;
        for m in months_newest_first {
            if let Some((_, at)) = self.one(self.q().inbox_newest_in_month(uid, *m)).await? {
                newest = Some(at);
                break;
            }
        }
        let Some(at) = newest else {
            return Ok(0);
        };
        let day = i32::try_from(at.div_euclid(86_400_000_000_000)).unwrap_or(i32::MAX);
        let cutoff_day = day.saturating_sub(crate::fold::CHANGE_RETENTION.whole_days() as i32);
        Ok(
            match self.one(self.q().feed_day_from(0, cutoff_day)).await? {
                Some((first_day, first)) if first_day <= day => first.max(0) as u64,
                _ => 0,
            },
        )
    }

    pub(super) async fn stats(&self, uid: &str) -> StoreResult<InboxStats> {
        let mut s = InboxStats::default();
        if let Some(r) = self.one(self.q().counts_get(uid)).await? {
            s.total = count(r.0);
            s.unread = count(r.1);
            s.unseen = count(r.2);
            s.seen_at = r.4.map(from_ns).transpose()?;
        }
        // Every unread entry has one level: level 0's count is the rest of the unread count
        // (the fold keeps no row for it; one kept by an older version is left unread here).
        let mut other_levels = 0i64;
        for (dim, key, n) in self.all(self.q().unread_by_of(uid)).await? {
            let target = match dim.as_str() {
                "type" => &mut s.unread_by_type,
                "level" if key == "0" => continue,
                "level" => {
                    other_levels += n.max(0);
                    &mut s.unread_by_level
                }
                other => return Err(StoreError::Corrupt(format!("counter dimension {other}"))),
            };
            if n > 0 {
                target.insert(key, n as u64);
            }
        }
        let level_0 = s.unread as i64 - other_levels;
        if level_0 > 0 {
            s.unread_by_level.insert("0".into(), level_0 as u64);
        }
        Ok(s)
    }

    pub(super) async fn notification(
        &self,
        uid: &str,
        id: Uuid,
    ) -> StoreResult<Option<Notification>> {
        let Some((m, seq)) = self.one(self.q().inbox_id_get(uid, id)).await? else {
            return Ok(None);
        };
        match self.one(self.q().inbox_get(uid, m, seq)).await? {
            Some(r) => notification_from(uid, seq, r).map(Some),
            None => Ok(None),
        }
    }

    /// The oldest outbox entries over all shards.
    pub(super) async fn outbox_page(&self, limit: usize) -> StoreResult<Vec<(i64, DispatchTask)>> {
        let per_shard = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let shards = (0..OUTBOX_SHARDS as i32)
            .map(|shard| self.all(self.q().outbox_in_shard(shard, per_shard)));
        let mut rows: Vec<(i64, i32, String)> = futures::future::try_join_all(shards)
            .await?
            .into_iter()
            .flatten()
            .collect();
        rows.sort_by_key(|r| (r.0, r.1));
        rows.truncate(limit);
        rows.into_iter()
            .map(|(seq, n, task)| Ok((outbox_id(seq, n), parse_json(&task)?)))
            .collect()
    }

    pub(super) async fn message_by_id(&self, mid: Uuid) -> StoreResult<Option<StoredMessage>> {
        match self.one(self.q().message_get(mid)).await? {
            Some(r) => message_from(mid, &r).map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn receipts_page(
        &self,
        mid: Uuid,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<Receipt>> {
        let total = self
            .all(self.q().receipt_counts_of(mid))
            .await?
            .into_iter()
            .map(|(_, _, n)| n.max(0) as u64)
            .sum();
        let wanted = skip(offset).saturating_add(limit as usize);
        let mut rows = Vec::new();
        self.scan(self.q().receipts_of(mid), |r| {
            rows.push(r);
            Ok(rows.len() < wanted)
        })
        .await?;
        let items = page(rows, offset, limit)
            .into_iter()
            .map(|(uid, device_id, channel, status, attempts, reason, at)| {
                Ok(Receipt {
                    mid,
                    uid,
                    device_id,
                    channel,
                    status: ReceiptStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("receipt status {status}")))?,
                    attempts: attempts.unwrap_or(0).max(0) as u32,
                    reason,
                    updated_at: from_ns(at)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Page { items, total })
    }

    /// Dead letters, newest first; every month is read to count them (they are few: a dead
    /// letter is a delivery that failed for good).
    pub(super) async fn failed_page(
        &self,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<FailedDelivery>> {
        let mut months: Vec<i32> = self
            .all(self.q().failed_months_of(0))
            .await?
            .into_iter()
            .map(|(m,)| m)
            .collect();
        months.sort_unstable_by(|a, b| b.cmp(a));
        let mut all = Vec::new();
        for m in months {
            for r in self.all(self.q().failed_in_month(m)).await? {
                let (seq, rest) = (r.0, (r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9));
                all.push((seq, failed_from(rest)?));
            }
        }
        all.sort_by(|a, b| {
            b.1.failed_at
                .cmp(&a.1.failed_at)
                .then_with(|| a.1.id.cmp(&b.1.id))
        });
        let total = all.len() as u64;
        let items = page(all, offset, limit)
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        Ok(Page { items, total })
    }

    pub(super) async fn failed_by_id(&self, id: &str) -> StoreResult<Option<FailedDelivery>> {
        match self.one(self.q().failed_id_get(id)).await? {
            Some((m, seq)) => self.failed_at(m, seq).await,
            None => Ok(None),
        }
    }

    pub(super) async fn failed_at(
        &self,
        month: i32,
        seq: i64,
    ) -> StoreResult<Option<FailedDelivery>> {
        self.one(self.q().failed_get(month, seq))
            .await?
            .map(failed_from)
            .transpose()
    }
}

/// The `new` frame of an entry, as text.
fn new_frame_text(n: &Notification) -> String {
    String::from_utf8_lossy(&crate::fold::new_frame(n)).into_owned()
}

fn failed_from(r: super::statements::FailedRow) -> StoreResult<FailedDelivery> {
    Ok(FailedDelivery {
        id: r.0,
        mid: r.1,
        uid: r.2,
        device_id: r.3,
        channel: r.4,
        reason: r.5,
        permanent: r.6,
        attempts: r.7.max(0) as u32,
        failed_at: from_ns(r.8)?,
    })
}
