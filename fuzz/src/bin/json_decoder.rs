//! AFL++ harness for [`fluidity_fuzz::json_decoder`].
fn main() {
    afl::fuzz!(|data: &[u8]| fluidity_fuzz::json_decoder(data));
}
