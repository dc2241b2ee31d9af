//! AFL++ harness for [`fluidity_fuzz::csr`].
fn main() {
    afl::fuzz!(|data: &[u8]| fluidity_fuzz::csr(data));
}
