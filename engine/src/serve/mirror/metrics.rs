//! The mirror's counters and gauges, exposed at `/metrics` in Prometheus's text format by the
//! `prometheus-client` crate.
//!
//! Invariants: no label carries a repo, a path, a token or an address (bounded cardinality,
//! nothing secret); counters only grow. Not here: deciding anything from them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label, `class` or `kind`, from a fixed set of values.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Class {
    pub(crate) class: String,
}

impl Class {
    pub(crate) fn of(class: &str) -> Class {
        Class {
            class: class.to_owned(),
        }
    }
}

/// Everything the mirror counts.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests answered, by `class`: `api`, `file`, `metrics`, `other`.
    pub(crate) requests: Family<Class, Counter>,
    /// File GETs answered from a verified blob in the cache.
    pub(crate) hits: Counter,
    /// File GETs that joined or started a fill.
    pub(crate) misses: Counter,
    /// Bytes of file answers from the cache (as announced: a client may leave early).
    pub(crate) bytes_from_cache: Counter,
    /// Bytes sent to clients from fills.
    pub(crate) bytes_from_fills: Counter,
    /// Of those, bytes sent before the blob's hash was checked.
    pub(crate) bytes_unverified: Counter,
    /// Bytes of the blobs fills put in place, verified (what the upstream had to send at
    /// least; its actual egress, retries included, is the upstream's to count).
    pub(crate) filled_bytes: Counter,
    /// Fills ended, by `class`: `verified`, `failed`.
    pub(crate) fills: Family<Class, Counter>,
    /// Fills whose bytes did not match the listing's hash.
    pub(crate) verification_failures: Counter,
    /// Listings and revisions asked of the upstream.
    pub(crate) upstream_requests: Counter,
    /// Upstream refusals and failures, by `class`: `not_found`, `denied`, `rate_limited`,
    /// `bad_listing`, `failed`.
    pub(crate) upstream_errors: Family<Class, Counter>,
    /// Fills running now (set when scraped).
    pub(crate) fills_in_flight: Gauge,
    /// Readers blocked on a fill now (set when scraped).
    pub(crate) waiting_readers: Gauge,
    /// Blobs deleted to stay under `--max-size`.
    pub(crate) evictions: Counter,
    /// Fills that failed and went on from their journal, before readers were told.
    pub(crate) fill_resumes: Counter,
    /// Bytes of the blobs kept under `--max-size` (set when scraped).
    pub(crate) cache_bytes: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry_mirror");
        let m = Metrics {
            requests: Family::default(),
            hits: Counter::default(),
            misses: Counter::default(),
            bytes_from_cache: Counter::default(),
            bytes_from_fills: Counter::default(),
            bytes_unverified: Counter::default(),
            filled_bytes: Counter::default(),
            fills: Family::default(),
            verification_failures: Counter::default(),
            upstream_requests: Counter::default(),
            upstream_errors: Family::default(),
            fills_in_flight: Gauge::default(),
            waiting_readers: Gauge::default(),
            evictions: Counter::default(),
            fill_resumes: Counter::default(),
            cache_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by class",
            m.requests.clone(),
        );
        registry.register(
            "cache_hits",
            "File GETs answered from the cache",
            m.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "File GETs answered from a fill",
            m.misses.clone(),
        );
        registry.register(
            "bytes_from_cache",
            "Bytes of file answers from the cache",
            m.bytes_from_cache.clone(),
        );
        registry.register(
            "bytes_from_fills",
            "Bytes sent to clients from fills",
            m.bytes_from_fills.clone(),
        );
        registry.register(
            "bytes_unverified",
            "Bytes sent from fills before the blob's hash was checked",
            m.bytes_unverified.clone(),
        );
        registry.register(
            "filled_bytes",
            "Bytes of the blobs fills put in place, verified",
            m.filled_bytes.clone(),
        );
        registry.register("fills", "Fills ended, by outcome", m.fills.clone());
        registry.register(
            "verification_failures",
            "Fills whose bytes did not match the listing's hash",
            m.verification_failures.clone(),
        );
        registry.register(
            "upstream_requests",
            "Revisions and listings asked of the upstream",
            m.upstream_requests.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream refusals and failures, by class",
            m.upstream_errors.clone(),
        );
        registry.register(
            "fills_in_flight",
            "Fills running",
            m.fills_in_flight.clone(),
        );
        registry.register(
            "waiting_readers",
            "Readers blocked on a fill",
            m.waiting_readers.clone(),
        );
        registry.register(
            "evictions",
            "Blobs deleted to stay under --max-size",
            m.evictions.clone(),
        );
        registry.register(
            "fill_resumes",
            "Fills that failed and went on from their journal",
            m.fill_resumes.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes of the blobs kept under --max-size",
            m.cache_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
