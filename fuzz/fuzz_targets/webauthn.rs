//! See `dualtrust::fuzzing::webauthn` for the input format and the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dualtrust::fuzzing::webauthn(data));
