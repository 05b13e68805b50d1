//! See `dualtrust::fuzzing::sql` for the input format and the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dualtrust::fuzzing::sql(data));
