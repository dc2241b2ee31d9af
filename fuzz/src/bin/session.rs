//! AFL++ harness for [`fluidity_fuzz::session`].
fn main() {
    afl::fuzz!(|data: &[u8]| fluidity_fuzz::session(data));
}
