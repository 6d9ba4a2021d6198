//! Every route's JSON body type through the gateway's extractor (the first byte picks the
//! route), plus the checks of message options and experiments.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((kind, body)) = data.split_first() {
        gateway::routes::fuzzing::request_body(*kind, body);
    }
});
