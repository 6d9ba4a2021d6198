//! The fold of stage-based messaging (seed 002): its records and their index rows, and each
//! due send (a schedule's tick, or `POST /subscriptions/{id}/send`), which delivers the
//! subscription's next message through the ordinary path (inbox entry, live frame, dispatch
//! tasks) and advances the subscription in the same application of the event.
//!
//! Index rows, all [`StageDoc`]s beside the records: `messageset_name` (short name -> set id),
//! `messages_of.<set>` (`<sequence:010>.<lang>` -> message id, ordered by sequence number),
//! `subscriptions_on.<schedule>` and `subscriptions_of.<identity>` (subscription ids).

use std::collections::HashMap;

use exchange::events::{MessageOpts, StageKind};
use exchange::stage::{
    MessageRecord, MessageSetRecord, STATUS_COMPLETED, STATUS_ERROR, SubscriptionRecord,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::fold::{Changes, Effects, FoldTarget};
use crate::model::{StageDoc, StoredMessage};
use crate::store::{StoreError, StoreResult};

/// The notification type of a stage message.
pub const STAGE_MESSAGE: &str = "stage_message";
/// The sender recorded on stage messages.
pub const STAGE_SENDER: &str = "stage";

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("stage record: {e}"))
}

fn index_doc(kind: String, id: String, ord: i64, body: String) -> StageDoc {
    StageDoc {
        kind,
        id,
        ord,
        body,
    }
}

fn message_key(m: &MessageRecord) -> String {
    format!("{:010}.{}", m.sequence_number, m.lang)
}

fn ord_of(id: &str, seq: u64) -> i64 {
    id.parse::<i64>()
        .unwrap_or(i64::try_from(seq).unwrap_or(i64::MAX))
}

/// The index rows of a record.
fn indexes(kind: StageKind, record: &Value, seq: u64) -> Vec<StageDoc> {
    let ord = i64::try_from(seq).unwrap_or(i64::MAX);
    match kind {
        StageKind::Messageset => serde_json::from_value::<MessageSetRecord>(record.clone())
            .map(|s| {
                vec![index_doc(
                    "messageset_name".into(),
                    s.short_name,
                    0,
                    s.id.to_string(),
                )]
            })
            .unwrap_or_default(),
        StageKind::Message => serde_json::from_value::<MessageRecord>(record.clone())
            .map(|m| {
                vec![index_doc(
                    format!("messages_of.{}", m.messageset),
                    message_key(&m),
                    i64::from(m.sequence_number),
                    m.id.to_string(),
                )]
            })
            .unwrap_or_default(),
        StageKind::Subscription => serde_json::from_value::<SubscriptionRecord>(record.clone())
            .map(|s| {
                vec![
                    index_doc(
                        format!("subscriptions_on.{}", s.schedule),
                        s.id.to_string(),
                        ord,
                        String::new(),
                    ),
                    index_doc(
                        format!("subscriptions_of.{}", s.identity),
                        s.id.to_string(),
                        ord,
                        String::new(),
                    ),
                ]
            })
            .unwrap_or_default(),
        StageKind::Schedule | StageKind::Binarycontent => Vec::new(),
    }
}

/// `stage_record_saved`: the record (keeping a subscription's send position and its place in
/// lists), and its index rows moved with it.
pub(crate) fn save<T: FoldTarget + ?Sized>(
    t: &mut T,
    seq: u64,
    kind: StageKind,
    id: &str,
    record: &Value,
) -> StoreResult<()> {
    let old = t.stage_doc(kind.as_str(), id)?;
    let mut record = record.clone();
    let mut ord = ord_of(id, seq);
    if let Some(old) = &old {
        ord = old.ord;
        let old_record: Value = serde_json::from_str(&old.body).map_err(corrupt)?;
        if kind == StageKind::Subscription {
            for key in ["_applied", "_sent"] {
                if let Some(v) = old_record.get(key)
                    && record.get(key).is_none()
                {
                    record[key] = v.clone();
                }
            }
        }
    }
    let mut fresh = indexes(kind, &record, seq);
    if kind == StageKind::Subscription {
        for i in &mut fresh {
            i.ord = ord;
        }
    }
    if let Some(old) = &old {
        let old_record: Value = serde_json::from_str(&old.body).map_err(corrupt)?;
        // Only rows that moved are deleted: on Cassandra a delete and a write of the same
        // row in one batch share a timestamp, and the delete would win.
        for i in indexes(kind, &old_record, seq) {
            if !fresh.iter().any(|f| f.kind == i.kind && f.id == i.id) {
                t.delete_stage_doc(&i.kind, &i.id)?;
            }
        }
    }
    for i in &fresh {
        t.put_stage_doc(i)?;
    }
    t.put_stage_doc(&StageDoc {
        kind: kind.as_str().into(),
        id: id.to_owned(),
        ord,
        body: record.to_string(),
    })
}

/// `stage_record_deleted`: the record and its index rows.
pub(crate) fn delete<T: FoldTarget + ?Sized>(
    t: &mut T,
    seq: u64,
    kind: StageKind,
    id: &str,
) -> StoreResult<()> {
    if let Some(old) = t.stage_doc(kind.as_str(), id)? {
        let old_record: Value = serde_json::from_str(&old.body).map_err(corrupt)?;
        for i in indexes(kind, &old_record, seq) {
            t.delete_stage_doc(&i.kind, &i.id)?;
        }
        t.delete_stage_doc(kind.as_str(), id)?;
    }
    Ok(())
}

/// Message sets read once per event.
#[derive(Default)]
pub(crate) struct Sets {
    sets: HashMap<u64, Option<MessageSetRecord>>,
    /// Per set: its messages' `(sequence, lang, message id)`, by sequence.
    messages: HashMap<u64, Vec<(u32, String, u64)>>,
}

impl Sets {
    fn set<T: FoldTarget + ?Sized>(
        &mut self,
        t: &mut T,
        id: u64,
    ) -> StoreResult<Option<MessageSetRecord>> {
        if let Some(s) = self.sets.get(&id) {
            return Ok(s.clone());
        }
        let s = match t.stage_doc("messageset", &id.to_string())? {
            Some(d) => Some(serde_json::from_str(&d.body).map_err(corrupt)?),
            None => None,
        };
        self.sets.insert(id, s.clone());
        Ok(s)
    }

    fn messages<T: FoldTarget + ?Sized>(
        &mut self,
        t: &mut T,
        set: u64,
    ) -> StoreResult<&[(u32, String, u64)]> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.messages.entry(set) {
            let mut rows = Vec::new();
            for d in t.stage_docs_of(&format!("messages_of.{set}"))? {
                if let (Some((n, lang)), Ok(mid)) = (d.id.split_once('.'), d.body.parse::<u64>())
                    && let Ok(n) = n.parse::<u32>()
                {
                    rows.push((n, lang.to_owned(), mid));
                }
            }
            rows.sort();
            slot.insert(rows);
        }
        Ok(self.messages.get(&set).map(Vec::as_slice).unwrap_or(&[]))
    }
}

/// The id of a derived record: `base` with its last 8 bytes mixed with `n`, as a version-8
/// UUID (deterministic, so a rebuild derives the same).
fn derived(base: Uuid, n: u64) -> Uuid {
    let mut b = *base.as_bytes();
    for (i, x) in n.to_be_bytes().iter().enumerate() {
        b[8 + i] ^= x;
    }
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// `created_at`-style text of `at`.
fn stamp(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Sends subscription `id` its next message (the event at `seq`): nothing for an inactive,
/// completed or unknown one. A subscription this very event already advanced (an application
/// interrupted after its record was written, on a backend that writes in parts) gets the same
/// message again, which finds its inbox entry and rewrites only what is missing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn send<T: FoldTarget + ?Sized>(
    t: &mut T,
    seq: u64,
    id: &str,
    at: OffsetDateTime,
    effects: Effects,
    changes: &mut Changes<'_>,
    sets: &mut Sets,
) -> StoreResult<()> {
    let Some(doc) = t.stage_doc("subscription", id)? else {
        return Ok(());
    };
    let mut sub: SubscriptionRecord = serde_json::from_str(&doc.body).map_err(corrupt)?;
    let again = sub.applied == seq;
    if sub.applied > seq || (!again && (!sub.active || sub.completed)) {
        return Ok(());
    }
    let set = sets.set(t, sub.messageset)?;
    let messages = sets.messages(t, sub.messageset)?.to_vec();
    let n = if again {
        sub.sent
    } else {
        sub.next_sequence_number
    };
    // The subscription's language, else the set's first language (its first message's).
    let first_lang = messages.first().map(|(_, l, _)| l.clone());
    let pick = messages
        .iter()
        .find(|(s, l, _)| *s == n && *l == sub.lang)
        .or_else(|| {
            messages
                .iter()
                .find(|(s, l, _)| *s == n && Some(l) == first_lang.as_ref())
        });
    let found = match (set, pick) {
        (Some(set), Some((_, lang, message_id))) => t
            .stage_doc("message", &message_id.to_string())?
            .map(|m| (set, lang, m)),
        _ => None,
    };
    let Some((set, lang, m)) = found else {
        if !again {
            // Nothing to send at this number: an error the subscription shows.
            sub.process_status = STATUS_ERROR;
            sub.applied = seq;
            sub.updated_at = stamp(at);
            put_subscription(t, &sub, doc.ord)?;
        }
        return Ok(());
    };
    let m: MessageRecord = serde_json::from_str(&m.body).map_err(corrupt)?;
    let mut data = serde_json::Map::new();
    data.insert("subscription".into(), json!(sub.id));
    data.insert("messageset".into(), json!(set.id));
    data.insert("messageset_name".into(), json!(set.short_name));
    data.insert("message".into(), json!(m.id));
    data.insert("sequence_number".into(), json!(n));
    data.insert("lang".into(), json!(lang));
    if *lang != sub.lang {
        // The receipt of a fallback says so.
        data.insert("requested_lang".into(), json!(sub.lang));
        data.insert("lang_fallback".into(), json!(true));
    }
    if let Some(b) = m.binary_content {
        data.insert("binary_content".into(), json!(b));
        data.insert(
            "content_url".into(),
            json!(format!("/api/v1/message/{}/content/", m.id)),
        );
    }
    let stored = StoredMessage {
        mid: derived(sub.id, seq),
        tid: None,
        sender: STAGE_SENDER.into(),
        msg: m.text_content.clone().unwrap_or_default(),
        opts: MessageOpts {
            ntype: Some(STAGE_MESSAGE.into()),
            title: Some(set.short_name.clone()),
            data: Some(data),
            ..Default::default()
        },
        created_at: at,
        recipients: 0,
        experiment: None,
        variant: None,
    };
    if t.insert_message(&stored)? {
        changes.announce_new(true);
        let sent = crate::fold::deliver(
            t,
            seq,
            &stored,
            vec![sub.identity.clone()],
            false,
            effects,
            changes,
        );
        changes.announce_new(false);
        sent?;
    }
    if again {
        // Advanced (and any next subscription created) by the interrupted application.
        return Ok(());
    }
    sub.applied = seq;
    sub.sent = n;
    sub.updated_at = stamp(at);
    sub.process_status = exchange::stage::STATUS_READY;
    let last = messages.iter().map(|(s, _, _)| *s).max().unwrap_or(0);
    if n >= last {
        sub.completed = true;
        sub.active = false;
        sub.process_status = STATUS_COMPLETED;
        if let Some(next) = set.next_set
            && let Some(next_set) = sets.set(t, next)?
        {
            let follow = SubscriptionRecord {
                id: derived(sub.id, seq | 1 << 63),
                identity: sub.identity.clone(),
                version: sub.version,
                messageset: next,
                next_sequence_number: 1,
                lang: sub.lang.clone(),
                active: true,
                completed: false,
                schedule: next_set.default_schedule,
                process_status: exchange::stage::STATUS_READY,
                metadata: sub.metadata.clone(),
                created_at: stamp(at),
                updated_at: stamp(at),
                created_by: Some(STAGE_SENDER.into()),
                updated_by: Some(STAGE_SENDER.into()),
                applied: 0,
                sent: 0,
            };
            let record = serde_json::to_value(&follow).map_err(corrupt)?;
            save(
                t,
                seq,
                StageKind::Subscription,
                &follow.id.to_string(),
                &record,
            )?;
        }
    } else {
        sub.next_sequence_number = n + 1;
    }
    put_subscription(t, &sub, doc.ord)
}

fn put_subscription<T: FoldTarget + ?Sized>(
    t: &mut T,
    sub: &SubscriptionRecord,
    ord: i64,
) -> StoreResult<()> {
    let body = serde_json::to_string(sub).map_err(corrupt)?;
    t.put_stage_doc(&StageDoc {
        kind: "subscription".into(),
        id: sub.id.to_string(),
        ord,
        body,
    })
}

/// The subscriptions a tick of `schedule` sends to, in the order they were created.
pub(crate) fn on_schedule<T: FoldTarget + ?Sized>(
    t: &mut T,
    schedule: &str,
) -> StoreResult<Vec<String>> {
    Ok(t.stage_docs_of(&format!("subscriptions_on.{schedule}"))?
        .into_iter()
        .map(|d| d.id)
        .collect())
}
