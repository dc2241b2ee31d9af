//! `cli::keep_freed_buffers`: buffers freed and allocated again cost no page faults.
//! (Its own test binary: it changes the process's allocator settings, and counts the
//! process's page faults.)

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::expect_used)] // test code: a failure should panic

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    let after_name = stat.rsplit_once(')').expect("a stat line").1;
    after_name
        .split_whitespace()
        .nth(7)
        .and_then(|field| field.parse().ok())
        .expect("minflt")
}

/// Allocates, fills and frees four 64 KiB buffers (a burst of socket reads) `rounds` times;
/// the page faults that took.
fn churn(rounds: usize) -> u64 {
    let before = minor_faults();
    for round in 0..rounds {
        let buffers: Vec<Vec<u8>> = (0..4).map(|_| vec![round as u8; 64 * 1024]).collect();
        drop(std::hint::black_box(buffers));
    }
    minor_faults() - before
}

#[test]
fn freed_read_buffers_are_reused_without_page_faults() {
    fluidity_core::cli::keep_freed_buffers();
    churn(10);
    // With glibc's default 128 KiB trim threshold, each round gives the 256 KiB back to the
    // kernel and faults 64 pages in again: about 64,000 faults for 1,000 rounds.
    let faults = churn(1000);
    assert!(
        faults < 1000,
        "{faults} page faults for 1,000 rounds of 4 freed 64 KiB buffers"
    );
}
