//! Any bytes on the stream: the event decoder gives an envelope or an error, never a panic,
//! and an envelope it accepts writes back to JSON that decodes to the same envelope.
#![no_main]

use exchange::events::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        let written = serde_json::to_vec(&env).expect("an envelope serializes");
        let again = Envelope::from_json(&written).expect("what this build writes decodes");
        assert_eq!(
            serde_json::to_value(&env).expect("to a value"),
            serde_json::to_value(&again).expect("to a value"),
            "an envelope changed on the way through JSON"
        );
    }
});
