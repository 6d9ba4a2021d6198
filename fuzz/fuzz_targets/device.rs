//! `POST /devices` bodies: native tokens, phone numbers, e-mail addresses and Push API
//! subscriptions (endpoint URL, keys).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::routes::fuzzing::device(data));
