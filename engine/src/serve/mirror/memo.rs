//! Answers from the upstream kept for a while, one fetch per key at a time: callers of the same
//! key that come while it is being fetched wait for that fetch instead of sending their own
//! ("single flight"), then share its answer until it expires.
//!
//! Invariants: an error is never kept (the next caller asks again: a 401, 403, 429 or 5xx is
//! never remembered as "not found"); at most [`Memo::new`]'s `cap` keys are held. Not here:
//! what the keys and lifetimes are (`mirror/mod.rs`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Slot<V> = Arc<Mutex<Option<(V, Instant, Duration)>>>;

/// Values by key, each kept for the lifetime it was stored with.
#[derive(Debug)]
pub(crate) struct Memo<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Memo<K, V> {
    pub(crate) fn new(cap: usize) -> Memo<K, V> {
        Memo {
            slots: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    /// The value of `key`: kept, or fetched by `fetch` (once for every caller waiting on the
    /// same key) and kept for `ttl`. The second field is true when it was fetched by this call.
    pub(crate) fn get<E>(
        &self,
        key: &K,
        ttl: Duration,
        fetch: impl FnOnce() -> Result<V, E>,
    ) -> Result<(V, bool), E> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if !slots.contains_key(key) && slots.len() >= self.cap {
                prune(&mut slots, self.cap);
            }
            Arc::clone(slots.entry(key.clone()).or_default())
        };
        // Callers of one key queue here while the first fetches.
        let mut kept = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((value, at, ttl)) = &*kept
            && at.elapsed() < *ttl
        {
            return Ok((value.clone(), false));
        }
        let value = fetch()?;
        *kept = Some((value.clone(), Instant::now(), ttl));
        Ok((value, true))
    }
}

/// Drops expired and empty slots not in use; if that is not enough, every slot not in use.
fn prune<K: Hash + Eq, V>(slots: &mut HashMap<K, Slot<V>>, cap: usize) {
    slots.retain(|_, slot| match slot.try_lock() {
        Ok(kept) => kept
            .as_ref()
            .is_some_and(|(_, at, ttl)| at.elapsed() < *ttl),
        // Being fetched: kept.
        Err(_) => true,
    });
    if slots.len() >= cap {
        slots.retain(|_, slot| slot.try_lock().is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_callers_of_one_key_share_one_fetch() {
        let memo: Arc<Memo<&str, u32>> = Arc::new(Memo::new(16));
        let fetches = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (memo, fetches) = (Arc::clone(&memo), Arc::clone(&fetches));
                std::thread::spawn(move || {
                    memo.get(&"k", Duration::from_secs(60), || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        Ok::<_, ()>(7)
                    })
                    .map(|(v, _)| v)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn errors_are_not_kept_and_values_expire() {
        let memo: Memo<u8, u8> = Memo::new(4);
        assert_eq!(memo.get(&1, Duration::from_secs(60), || Err(403)), Err(403));
        assert_eq!(
            memo.get(&1, Duration::from_secs(60), || Ok::<_, u16>(1)),
            Ok((1, true))
        );
        assert_eq!(
            memo.get(&1, Duration::from_secs(60), || Ok::<_, u16>(2)),
            Ok((1, false))
        );
        assert_eq!(
            memo.get(&2, Duration::ZERO, || Ok::<_, u16>(5)),
            Ok((5, true))
        );
        assert_eq!(
            memo.get(&2, Duration::ZERO, || Ok::<_, u16>(6)),
            Ok((6, true))
        );
    }

    #[test]
    fn the_number_of_keys_is_bounded() {
        let memo: Memo<u32, u32> = Memo::new(8);
        for k in 0..100 {
            memo.get(&k, Duration::from_secs(60), || Ok::<_, ()>(k))
                .expect("value");
        }
        assert!(memo.slots.lock().expect("lock").len() <= 8);
    }
}
