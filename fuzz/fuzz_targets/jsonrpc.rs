//! See `dualtrust::fuzzing::jsonrpc` for the input format and the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dualtrust::fuzzing::jsonrpc(data));
