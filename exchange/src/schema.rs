//! JSON Schema of the events, generated from the Rust types. The checked-in copies under
//! `schema/events/` are what analysts read; a test fails when they drift from the types.

use schemars::{JsonSchema, schema_for};
use serde_json::Value;

use crate::events::*;

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schema_for!(T)).unwrap_or(Value::Null)
}

/// `(file name, schema)` for the envelope (all kinds) and for each kind's `data` payload.
pub fn event_schemas() -> Vec<(String, Value)> {
    vec![
        ("envelope.json".into(), schema_of::<Envelope>()),
        ("device_enlisted.json".into(), schema_of::<DeviceEnlisted>()),
        ("device_removed.json".into(), schema_of::<DeviceRemoved>()),
        ("thread_created.json".into(), schema_of::<ThreadCreated>()),
        ("subscribed.json".into(), schema_of::<Subscribed>()),
        ("unsubscribed.json".into(), schema_of::<Unsubscribed>()),
        (
            "message_published.json".into(),
            schema_of::<MessagePublished>(),
        ),
        ("message_sent.json".into(), schema_of::<MessageSent>()),
        (
            "notifications_read.json".into(),
            schema_of::<NotificationsRead>(),
        ),
        ("delivery_sent.json".into(), schema_of::<DeliverySent>()),
        ("delivery_failed.json".into(), schema_of::<DeliveryFailed>()),
        ("device_disabled.json".into(), schema_of::<DeviceDisabled>()),
        ("delivery_acked.json".into(), schema_of::<DeliveryAcked>()),
        (
            "delivery_requeued.json".into(),
            schema_of::<DeliveryRequeued>(),
        ),
        ("preferences_set.json".into(), schema_of::<PreferencesSet>()),
        ("type_registered.json".into(), schema_of::<TypeRegistered>()),
        (
            "notifications_archived.json".into(),
            schema_of::<NotificationsArchived>(),
        ),
        (
            "notifications_deleted.json".into(),
            schema_of::<NotificationsDeleted>(),
        ),
        ("inbox_read_all.json".into(), schema_of::<InboxReadAll>()),
        ("inbox_seen.json".into(), schema_of::<InboxSeen>()),
        ("user_blocked.json".into(), schema_of::<UserBlocked>()),
        ("user_unblocked.json".into(), schema_of::<UserUnblocked>()),
        ("message_deleted.json".into(), schema_of::<MessageDeleted>()),
        (
            "deliveries_settled.json".into(),
            schema_of::<DeliveriesSettled>(),
        ),
        (
            "message_scheduled.json".into(),
            schema_of::<MessageScheduled>(),
        ),
        (
            "schedule_cancelled.json".into(),
            schema_of::<ScheduleCancelled>(),
        ),
        ("tracked.json".into(), schema_of::<Tracked>()),
        ("session_ended.json".into(), schema_of::<SessionEnded>()),
        (
            "stage_record_saved.json".into(),
            schema_of::<StageRecordSaved>(),
        ),
        (
            "stage_record_deleted.json".into(),
            schema_of::<StageRecordDeleted>(),
        ),
        ("stage_tick.json".into(), schema_of::<StageTick>()),
        (
            "stage_send_requested.json".into(),
            schema_of::<StageSendRequested>(),
        ),
    ]
}

/// Pretty JSON with a trailing newline, the exact form checked in.
pub fn render(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
