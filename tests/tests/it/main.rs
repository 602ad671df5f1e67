//! ferry's integration tests, one module per topic, in one test binary: the real `ferry` binary
//! against real servers (nginx, `ferry serve`, proxies) and real clients on loopback.
//!
//! One binary, because no test here changes the state of its own process: every sandbox is
//! entered by a child process the test starts, never by the test binary itself. The seccomp
//! filter is installed by `seccomp-run` before it execs ferry (`seccomp`); the mount namespaces
//! of the small and failing disks (`disk`, `failing_disk`) and of the private `/etc/hosts`
//! (`connect`) are held by `unshare` children, and ferry joins them through `nsenter`; the
//! network namespace of `fast_open` is made by `unshare --net` around a second run of this
//! binary that runs its one ignored test only; the blkio cgroup of `backpressure` takes ferry's
//! process, not the test's. Environment variables are set on each child's `Command`, never on
//! this process. A test that needed its own process (one that changed its own limits, signal
//! dispositions, environment or namespaces) would get a `[[test]]` of its own in
//! tests/Cargo.toml, with the reason at its top.
//!
//! The shared fixtures are in the `ferry-testkit` crate (testkit/); nothing here is shared with
//! another binary.

mod backpressure;
mod connect;
mod disk;
mod errors;
mod failing_disk;
mod fast_open;
mod faults;
mod get;
mod growth;
mod hardening;
mod hls;
mod hls_faults;
mod hls_live;
mod hls_memory;
mod hls_ranges;
mod hls_resume;
mod hls_subtitles;
mod http2;
mod http3;
mod https;
mod limit_rate;
mod many;
mod mirrors;
mod ping;
mod pipelining;
mod pipelining_files;
mod proxies;
mod pull;
mod resume;
mod retries;
mod seccomp;
mod serve;
mod swarm;
