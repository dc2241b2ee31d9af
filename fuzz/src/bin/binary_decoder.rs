//! AFL++ harness for [`fluidity_fuzz::binary_decoder`].
fn main() {
    afl::fuzz!(|data: &[u8]| fluidity_fuzz::binary_decoder(data));
}
