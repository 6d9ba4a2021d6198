//! What a message event shows connected clients, derived from the event alone: who it reaches
//! and the "new" frame each of them gets. The gateway's live hub sends these frames straight
//! from the event stream, before the fold has written anything; the fold writes the very same
//! bytes into each recipient's change feed (`fold::frame`), so SSE resume and live frames agree.

use std::cell::OnceCell;
use std::collections::HashSet;

use bytes::Bytes;
use exchange::events::{Audience, Envelope, Event, MessageOpts};
use uuid::Uuid;

use crate::fold::{NEW, Position, frame};
use crate::model::{Notification, StoredMessage};

/// Who a message reaches (before preferences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach<'a> {
    /// A thread's subscribers, except the sender.
    Thread { tid: Uuid, sender: &'a str },
    /// These users (duplicates count once).
    Users(&'a [String]),
    /// Every known user.
    All,
}

/// A message event's audience and frames.
pub struct NewMessage<'a> {
    pub reach: Reach<'a>,
    pub opts: &'a MessageOpts,
    message: StoredMessage,
    seq: u64,
    /// Serialized on first use: most events reach no one on a given gateway. One per variant
    /// when the message has an experiment.
    templates: Vec<OnceCell<FrameTemplate>>,
    /// The recipients of a long list, for lookups.
    listed: Option<HashSet<&'a str>>,
}

impl NewMessage<'_> {
    /// Whether the message reaches `uid` (before preferences; a thread message's membership is
    /// the caller's to know). A user held out of its experiment gets nothing.
    pub fn reaches(&self, uid: &str) -> bool {
        if let Some(exchange::experiment::Arm::Holdout | exchange::experiment::Arm::Later) =
            self.message.arm_of(uid)
        {
            return false;
        }
        match self.reach {
            Reach::Thread { sender, .. } => sender != uid,
            Reach::Users(uids) => match &self.listed {
                Some(set) => set.contains(uid),
                None => uids.iter().any(|u| u == uid),
            },
            Reach::All => true,
        }
    }

    /// The `new` frame for recipient `uid` (their variant's), byte for byte what the fold
    /// records.
    pub fn frame_for(&self, uid: &str) -> Bytes {
        let slot = match self.message.arm_of(uid) {
            Some(exchange::experiment::Arm::Variant(i)) => i,
            _ => 0,
        };
        let Some(cell) = self.templates.get(slot) else {
            return Bytes::new();
        };
        cell.get_or_init(|| match self.message.experiment {
            Some(_) => FrameTemplate::new(&self.message.as_variant(slot), self.seq),
            None => FrameTemplate::new(&self.message, self.seq),
        })
        .for_uid(uid)
    }
}

/// The message an event creates, as the fold stores it (`recipients` 0), if it is one.
pub fn stored_message(env: &Envelope) -> Option<StoredMessage> {
    let (tid, sender, msg, opts, experiment) = match &env.event {
        Event::MessagePublished(e) => (Some(e.tid), &e.sender, &e.msg, &e.opts, &e.experiment),
        Event::MessageSent(e) => (None, &e.sender, &e.msg, &e.opts, &e.experiment),
        _ => return None,
    };
    Some(StoredMessage {
        mid: env.id,
        tid,
        sender: sender.clone(),
        msg: msg.clone(),
        opts: opts.clone(),
        created_at: env.occurred_at,
        recipients: 0,
        experiment: experiment.clone(),
        variant: None,
    })
}

/// The audience and frames of a message event at stream position `seq`; `None` for other
/// events.
pub fn new_message(seq: u64, env: &Envelope) -> Option<NewMessage<'_>> {
    let stored = stored_message(env)?;
    let (reach, opts) = match &env.event {
        Event::MessagePublished(e) => (
            Reach::Thread {
                tid: e.tid,
                sender: &e.sender,
            },
            &e.opts,
        ),
        Event::MessageSent(e) => (
            match &e.audience {
                Audience::User { uid } => Reach::Users(std::slice::from_ref(uid)),
                Audience::Users { uids } => Reach::Users(uids),
                Audience::All => Reach::All,
            },
            &e.opts,
        ),
        _ => return None,
    };
    let listed = match reach {
        Reach::Users(uids) if uids.len() > 8 => Some(uids.iter().map(String::as_str).collect()),
        _ => None,
    };
    let copies = stored
        .experiment
        .as_ref()
        .map_or(1, |e| e.variants.len().max(1));
    Some(NewMessage {
        reach,
        opts,
        message: stored,
        seq,
        templates: (0..copies).map(|_| OnceCell::new()).collect(),
        listed,
    })
}

/// The users an event makes known to the projection (`FoldTarget::touch_user` in the fold):
/// the actor, a new thread's owner, a subscriber, a direct message's recipients.
pub fn touched(env: &Envelope) -> Vec<&str> {
    let mut out = vec![env.actor.uid.as_str()];
    match &env.event {
        Event::ThreadCreated(e) => out.push(&e.owner),
        Event::Subscribed(e) => out.push(&e.uid),
        Event::MessageSent(e) => match &e.audience {
            Audience::User { uid } => out.push(uid),
            Audience::Users { uids } => out.extend(uids.iter().map(String::as_str)),
            Audience::All => {}
        },
        _ => {}
    }
    out
}

/// A `new` frame serialized once per message, with the recipient's uid spliced in: the frame
/// differs between recipients only there.
pub(crate) struct FrameTemplate {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

/// The serialized uid field of the template (the uid field comes right after the id, before
/// any caller-supplied text, so its first occurrence is the field itself).
const EMPTY_UID: &[u8] = br#""uid":"""#;

impl FrameTemplate {
    pub(crate) fn new(m: &StoredMessage, seq: u64) -> Self {
        let n = Notification::new(m, String::new(), seq);
        let bytes = frame(NEW, &n, Position { seq, sub: seq });
        match bytes.windows(EMPTY_UID.len()).position(|w| w == EMPTY_UID) {
            Some(at) => {
                // Keep `"uid":` in the prefix; the empty string literal `""` is replaced.
                let value = at + EMPTY_UID.len() - 2;
                Self {
                    prefix: bytes[..value].to_vec(),
                    suffix: bytes[value + 2..].to_vec(),
                }
            }
            // Unreachable with serde_json; an empty template sends nothing rather than a lie.
            None => Self {
                prefix: Vec::new(),
                suffix: Vec::new(),
            },
        }
    }

    pub(crate) fn for_uid(&self, uid: &str) -> Bytes {
        if self.prefix.is_empty() {
            return Bytes::new();
        }
        let mut out = Vec::with_capacity(self.prefix.len() + self.suffix.len() + uid.len() + 8);
        out.extend_from_slice(&self.prefix);
        // A JSON string literal of the uid, quotes included.
        if serde_json::to_writer(&mut out, uid).is_err() {
            return Bytes::new();
        }
        out.extend_from_slice(&self.suffix);
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exchange::Actor;
    use exchange::events::{MessagePublished, MessageSent};

    fn env(event: Event) -> Envelope {
        Envelope::new(
            Actor {
                uid: "sender \"quoted\"".into(),
                roles: vec![],
            },
            event,
        )
    }

    #[test]
    fn spliced_frames_equal_the_fold_s_frames() {
        let opts = MessageOpts {
            title: Some(r#"a "uid":"" inside"#.into()),
            ntype: Some("news".into()),
            ..Default::default()
        };
        let e = env(Event::MessagePublished(MessagePublished {
            tid: Uuid::now_v7(),
            sender: "s".into(),
            msg: r#"{"uid":""} ünï \n"#.into(),
            opts,
            experiment: None,
        }));
        let m = new_message(42, &e).unwrap();
        let stored = stored_message(&e).unwrap();
        for uid in ["alice", "", "a\"b\\c", "ünï ☃", "x.y@z"] {
            let n = Notification::new(&stored, uid.into(), 42);
            let expected = frame("new", &n, Position { seq: 42, sub: 42 });
            assert_eq!(
                m.frame_for(uid).as_ref(),
                expected.as_slice(),
                "uid {uid:?}"
            );
        }
    }

    #[test]
    fn reach_and_touched_users() {
        let tid = Uuid::now_v7();
        let e = env(Event::MessagePublished(MessagePublished {
            tid,
            sender: "s".into(),
            msg: "hi".into(),
            opts: MessageOpts::default(),
            experiment: None,
        }));
        assert_eq!(
            new_message(1, &e).unwrap().reach,
            Reach::Thread { tid, sender: "s" }
        );
        let e = env(Event::MessageSent(MessageSent {
            sender: "admin".into(),
            audience: Audience::Users {
                uids: vec!["a".into(), "b".into()],
            },
            msg: "hi".into(),
            opts: MessageOpts::default(),
            experiment: None,
        }));
        assert!(matches!(new_message(1, &e).unwrap().reach, Reach::Users(u) if u.len() == 2));
        assert_eq!(touched(&e), vec!["sender \"quoted\"", "a", "b"]);
    }
}
