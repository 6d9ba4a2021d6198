//! Query strings through the paging (limit, offset, cursor), time and id parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::routes::fuzzing::query(data));
